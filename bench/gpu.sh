#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one run of under 10 minutes. Installs nothing: it needs one
# CUDA GPU, python with torch, torchvision and pillow, and this repository as the working
# directory (W&B and the web stack are not used; the images are the synthetic set at CIFAR-10's
# size, since speed does not depend on content).
#
#     bash bench/gpu.sh            # PYTHON=python3.12 bash bench/gpu.sh to pick the interpreter
#
# Each step has its own time limit, so one that fails or hangs still leaves the others' figures.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

step() {
    local limit=$1 title=$2
    shift 2
    echo
    echo "== $title"
    timeout "$limit" "$PYTHON" -m bench.train_speed --device cuda "$@" || echo "!! this step failed or ran past ${limit}s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"

step 120 "1. Tutorial config (resnet18, batch 64): the tutorial's loop against trainboard, eager (target ratio >= 5)" \
    --rounds 2
step 150 "2. Tutorial config with CUDA graphs (compile=reduce-overhead) for the launch-bound batch of 64" \
    --rounds 1 --set compile=reduce-overhead
step 90 "3. fast94's full schedule, eager: wall time (target <= 30 s) and resnet18_cifar bf16 images/s (target >= 60,000)" \
    --preset fast94 --no-compare --schedule --test-size 10000
step 150 "4. fast94's full schedule with compile=default (the wall time includes compiling)" \
    --preset fast94 --no-compare --schedule --test-size 10000 --set compile=default
