#!/usr/bin/env bash
# bash bench/gpu_bench.sh WHEELS [model_bench.py options]
#
# On a one-GPU Linux machine that has Python with PyTorch (CUDA) and timm but
# no network, in under 8 minutes:
#   1. installs the project's other dependencies from the wheels in the folder
#      WHEELS (pip --no-index; what is already installed is kept);
#   2. makes a small synthetic data set and its image cache (bench/data/model/);
#   3. prints the GPU's name and, for ViT-B/16 and EfficientNet-B4 at 224 px:
#      training images/s with the project's loader against the same model and
#      batch on random tensors already on the GPU (the ceiling), the projected
#      time of one fold-0 epoch (468,000 images) against the original's 1.5-2 h,
#      and inference images/s projected to the challenge's 138,925 test images;
#      the figures go to bench/results/model_cuda.json.
#
# Fill WHEELS on a machine with network, for the GPU machine's Python 3.X
# (adamp has no wheel on PyPI: pip builds one, pure Python):
#   pip download -d wheels --only-binary=:all: --python-version 3.X --platform manylinux2014_x86_64 \
#       albumentations==2.0.8 opencv-python-headless==5.0.0.93 scikit-learn scipy pandas safetensors tqdm edfio
#   pip wheel -w wheels --no-deps adamp==0.3.0
# then copy this repository and the wheels folder over and run
#   bash bench/gpu_bench.sh wheels
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 1 || ! -d "$1" ]]; then
    echo "usage: bash bench/gpu_bench.sh WHEELS [model_bench.py options]   (WHEELS: a folder of wheels)" >&2
    exit 2
fi
WHEELS=$1
shift
PY=${PYTHON:-python3}

if ! "$PY" -c 'import sys, torch, timm; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "error: $PY needs PyTorch with a CUDA device, and timm" >&2
    exit 2
fi
"$PY" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$WHEELS" \
    albumentations==2.0.8 adamp==0.3.0 opencv-python-headless scikit-learn scipy pandas safetensors tqdm edfio
timeout 450 "$PY" bench/model_bench.py --device cuda "$@"
