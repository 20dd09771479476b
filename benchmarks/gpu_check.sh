#!/usr/bin/env bash
# One prepared GPU check for a session that is lent a GPU machine (it has PyTorch, not Ray):
# training throughput on CUDA (fp32 and bf16), the gpu-marked tests of the core (a CUDA bundle equals
# separate runs; bf16 keeps the AUROC) and the bundle benchmark (K up to 512).
# Needs the MNIST files: pass their directory (the device machine does not get ../shared; carry a copy).
#   bash benchmarks/gpu_check.sh DATA_DIR
set -uo pipefail
data=${1:?usage: gpu_check.sh DATA_DIR}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 benchmarks/bench_core.py --data-dir "$data" --device cuda --epochs 5
python3 benchmarks/bench_core.py --data-dir "$data" --device cuda --epochs 5 --bf16
DEEPSAD_SHARED_DATA="$data" python3 -m pytest -q -m gpu tests/deepsad/test_gpu.py -p no:cacheprovider
# many trials per GPU (issue 7): aggregate samples/s and trials/h for K = 1 … 512, fp32 then bf16
python3 benchmarks/bench_bundle.py --data-dir "$data" --device cuda --k 1,8,64,128,256,512 --epochs 3 --val-every 3 \
    --repeats 2 --baseline-trials 2 --no-process --json "${OUT:-.}/bundle_fp32.json"
python3 benchmarks/bench_bundle.py --data-dir "$data" --device cuda --bf16 --k 64,256,512 --epochs 3 --val-every 3 \
    --repeats 2 --baseline-trials 0 --json "${OUT:-.}/bundle_bf16.json"
