#!/usr/bin/env bash
# One prepared GPU check for a session that is lent a GPU machine (it has PyTorch, not Ray), about
# 6 minutes on an H200. Each step runs under its own time budget (timeout); every step writes its JSON
# as it goes, so a step that is cut keeps what it measured; at most 6 files land in $OUT, the last
# of them summary.json with the headline figures (benchmarks/gpu_summary.py):
#
#   core.json      one model, fp32 and bf16: AE / Deep SAD samples/s and ratios to the reference
#   step.json      one bundled step at K = 64 and 512: AE (both decoder formulations) and Deep SAD,
#                  against a bare vmap(grad) probe; host syncs per step; top-15 kernels by GPU time;
#                  bf16 at K = 512
#   bundle.json    bundles of K = 1, 64, 512 (vmap) and separate runs: samples/s per phase, AE / Deep
#                  SAD epoch ratio, the paper grid's projected GPU-minutes (planner order, by size)
#   fidelity.json  a CUDA bundle member against its separate run, stage by stage (tests/deepsad/test_gpu.py)
#   classes.json   MNIST's ten normal classes at the paper's settings: one bundle vs ten separate runs
#   summary.json
#
#   bash benchmarks/gpu_check.sh DATA_DIR             # on the GPU machine; figures land in $OUT (or .)
#   bash benchmarks/gpu_check.sh DATA_DIR --dry-run   # here, on the CPU, tiny sizes: checks the script
#                                                     # itself and that it needs nothing but torch,
#                                                     # numpy, scipy, scikit-learn, safetensors, pytest
# DATA_DIR holds mnist/ (the device machine does not get ../shared). From a session lent a GPU:
#   mkdir -p data && cp -r ../shared/data/mnist data/       # /data/ is git-ignored; 11 MB
#   device run: carry ["data"], command "bash benchmarks/gpu_check.sh data", timeout_s 480
# Every step runs even if an earlier one failed or was cut; the exit status is the number of failed steps.
set -uo pipefail
data=${1:?usage: gpu_check.sh DATA_DIR [--dry-run]}
dry=${2:-}
out=${OUT:-.}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8   # deterministic cuBLAS for the fidelity test (before CUDA starts)
py=${PYTHON:-python3}
status=$(mktemp "${TMPDIR:-/tmp}/gpu_check_status.XXXXXX")   # not in $OUT: its files are counted
trap 'rm -f "$status"' EXIT
failed=0
step() {  # step NAME SECONDS COMMAND...: run under a time budget; a failure or a cut is counted, not fatal
    local name=$1 budget=$2; shift 2
    echo "=== $name (budget ${budget} s): $*"
    local t0=$SECONDS rc=0
    timeout --signal=TERM --kill-after=10 "$budget" "$@" || rc=$?
    local took=$((SECONDS - t0))
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        echo "=== $name CUT after ${took} s (budget ${budget} s): its JSON keeps what it measured"
        failed=$((failed + 1)); echo "$name cut $took" >>"$status"
    elif [[ $rc -ne 0 ]]; then
        echo "=== $name FAILED (exit $rc)"; failed=$((failed + 1)); echo "$name failed $took" >>"$status"
    else
        echo "=== $name: ${took} s"; echo "$name ok $took" >>"$status"
    fi
}

if [[ $dry == --dry-run ]]; then
    dev=cpu core_epochs=1 step_args=(--k 2 --batch 16 --steps 2 --bf16-at 2) ks=1,2 epochs=2
    tests=(tests/deepsad/test_bundle_fidelity.py -k faithful)
    classes_args=(--epochs 1 --classes 0,1 --slice 3000 --workers 2)
    b_core=600 b_step=600 b_bundle=900 b_tests=900 b_classes=900   # a loaded 2-core CI machine
else
    dev=cuda core_epochs=4 step_args=(--k 64,512 --steps 5 --bf16-at 512) ks=1,64,512 epochs=3
    tests=(-m gpu tests/deepsad/test_gpu.py)
    classes_args=(--epochs 150 --workers 10)
    b_core=35 b_step=45 b_bundle=80 b_tests=60 b_classes=130   # 350 s in all
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
step core $b_core $py benchmarks/bench_core.py --data-dir "$data" --device $dev --epochs $core_epochs \
    --precisions fp32,bf16 --json "$out/core.json"
step step $b_step $py benchmarks/bench_step.py --device $dev "${step_args[@]}" --deconv phase,transpose \
    --profile 15 --json "$out/step.json"
step bundle $b_bundle $py benchmarks/bench_bundle.py --data-dir "$data" --device $dev --strategy vmap --k $ks \
    --epochs $epochs --val-every $epochs --repeats 1 --baseline-trials 2 --no-process --json "$out/bundle.json"
step tests $b_tests env DEEPSAD_SHARED_DATA="$data" DEEPSAD_FIDELITY_JSON="$out/fidelity.json" \
    $py -m pytest -q -p no:cacheprovider "${tests[@]}"
step classes $b_classes $py benchmarks/paper_classes.py --data-dir "$data" --device $dev "${classes_args[@]}" \
    --json "$out/classes.json"
$py benchmarks/gpu_summary.py "$out" --status "$status" || { echo "=== summary FAILED"; failed=$((failed + 1)); }
echo "gpu_check: $failed step(s) failed"
exit $failed
