#!/usr/bin/env bash
# One prepared GPU check for a session that is lent a GPU machine (it has PyTorch, not Ray):
# training throughput on CUDA (fp32 and bf16) and the gpu-marked tests of the core.
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
