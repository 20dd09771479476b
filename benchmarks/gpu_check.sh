#!/usr/bin/env bash
# One prepared GPU check for a session that is lent a GPU machine (it has PyTorch, not Ray):
# training throughput of one model on CUDA (fp32 and bf16), the gpu-marked tests of the core (a CUDA
# bundle equals separate runs; bf16 keeps the AUROC of fp32) and the bundle benchmark — aggregate and
# Deep SAD samples/s, trials/h and the projected cost of the paper's 450-run MNIST grid for K = 1 … 512,
# fp32 then bf16. Budget: about 6 minutes on an H200 (what the device tool lends is 15 minutes in all,
# start-up included), so run it once with a timeout that leaves room for one rerun.
#
#   bash benchmarks/gpu_check.sh DATA_DIR             # on the GPU machine; figures land in $OUT (or .)
#   bash benchmarks/gpu_check.sh DATA_DIR --dry-run   # here, on the CPU, tiny sizes: checks the script
#                                                     # itself and that it needs nothing but torch,
#                                                     # numpy, scipy, scikit-learn, safetensors, pytest
# DATA_DIR holds mnist/ (the device machine does not get ../shared). From a session lent a GPU:
#   mkdir -p data && cp -r ../shared/data/mnist data/       # /data/ is git-ignored; 11 MB
#   device run: carry ["data"], command "bash benchmarks/gpu_check.sh data", timeout_s 480
# Every step runs even if an earlier one failed; the exit status is the number of failed steps.
set -uo pipefail
data=${1:?usage: gpu_check.sh DATA_DIR [--dry-run]}
dry=${2:-}
out=${OUT:-.}
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
failed=0
step() {  # step NAME COMMAND...: run, time, and count a failure without stopping
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    "$@" || { echo "=== $name FAILED (exit $?)"; failed=$((failed + 1)); }
    echo "=== $name: $((SECONDS - t0)) s"
}

if [[ $dry == --dry-run ]]; then
    dev=cpu core_epochs=2 ks=1,2 ks_bf16=2 epochs=2 strategy=vmap repeats=1
    tests=(-m "not gpu" tests/deepsad/test_bundle.py -k "vmap and (diverging_lenet or bf16)")
else
    dev=cuda core_epochs=5 ks=1,8,64,128,256,512 ks_bf16=64,256,512 epochs=3 strategy=auto repeats=2
    tests=(-m gpu tests/deepsad/test_gpu.py)
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
step core-fp32 $py benchmarks/bench_core.py --data-dir "$data" --device $dev --epochs $core_epochs \
    --json "$out/core_fp32.json"
step core-bf16 $py benchmarks/bench_core.py --data-dir "$data" --device $dev --epochs $core_epochs --bf16 \
    --json "$out/core_bf16.json"
step tests env DEEPSAD_SHARED_DATA="$data" $py -m pytest -q -p no:cacheprovider "${tests[@]}"
# many trials per GPU (issue 7): K = 1 … 512 against separate runs in this process, fp32 then bf16
step bundle-fp32 $py benchmarks/bench_bundle.py --data-dir "$data" --device $dev --strategy $strategy --k $ks \
    --epochs $epochs --val-every $epochs --repeats $repeats --baseline-trials 2 --no-process --json "$out/bundle_fp32.json"
step bundle-bf16 $py benchmarks/bench_bundle.py --data-dir "$data" --device $dev --strategy $strategy --bf16 \
    --k $ks_bf16 --epochs $epochs --val-every $epochs --repeats $repeats --baseline-trials 0 --json "$out/bundle_bf16.json"
echo "gpu_check: $failed step(s) failed"
exit $failed
