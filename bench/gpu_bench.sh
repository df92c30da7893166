#!/usr/bin/env bash
# bash bench/gpu_bench.sh WHEELS [model_bench.py options]
#
# On a one-GPU Linux machine that has Python with PyTorch (CUDA) and timm but
# no network, in under 14 minutes (each bench under its own time limit):
#   1. installs the project's other dependencies from the wheels in the folder
#      WHEELS (pip --no-index; what is already installed is kept);
#   2. makes a small synthetic data set and its image cache (bench/data/model/);
#   3. prints the GPU's name and, for ViT-B/16 and EfficientNet-B4 at 224 px:
#      training images/s with the project's loader against the same model and
#      batch on random tensors already on the GPU (the ceiling), the projected
#      time of one fold-0 epoch (468,000 images) against the original's 1.5-2 h,
#      and inference images/s projected to the challenge's 138,925 test images;
#      the figures go to bench/results/model_cuda.json (at most 450 s);
#   4. scores a cohort on the GPU: bench/cohort_bench.py --device cuda, the CPU
#      bench's 8 synthetic 6-h nights (seed 1) and truncated file through
#      stage_edf.py, with a stand-in of the demo's model set
#      (bench/stand_in_model_set.py: the demo profile's architectures, input
#      size, resize and kept checkpoints, read from run.sh, initialised at
#      random: a forward pass costs what a trained one does); nights per hour
#      and each step's seconds go to bench/results/cohort_cuda.json (at most 300 s).
# COHORT_ONLY=1 skips step 3. The status is that of the first step that failed.
#
# Fill WHEELS on a machine with network, for the GPU machine's Python 3.X
# (adamp has no wheel on PyPI: pip builds one, pure Python). A machine with
# PyTorch alone:
#   pip download -d wheels --only-binary=:all: --python-version 3.X --platform manylinux2014_x86_64 \
#       albumentations==2.0.8 opencv-python-headless==5.0.0.93 scikit-learn scipy pandas safetensors tqdm \
#       edfio==0.4.18 mne==1.13.2
#   pip wheel -w wheels --no-deps adamp==0.3.0
# A machine that already has the scientific stack (numpy, scipy, pandas, scikit-learn, OpenCV,
# matplotlib, PyYAML, Jinja2, requests, lazy_loader), such as the lent GPU machines (Python 3.12):
# these alone, about 16 MB:
#   pip download -d wheels --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       albumentations==2.0.8 albucore==0.0.24 pydantic pydantic-core annotated-types typing-inspection \
#       typing-extensions stringzilla simsimd edfio==0.4.18 mne==1.13.2 decorator pooch platformdirs
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
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the sleepstaging package, from this checkout

if ! "$PY" -c 'import sys, torch, timm; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "error: $PY needs PyTorch with a CUDA device, and timm" >&2
    exit 2
fi
# the versions requirements.txt pins for the packages such a machine lacks
mapfile -t PINNED < <(grep -E '^(albumentations|adamp|edfio|mne)==' requirements.txt)
"$PY" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$WHEELS" \
    "${PINNED[@]}" opencv-python-headless scikit-learn scipy pandas safetensors tqdm matplotlib

status=0
if [[ ${COHORT_ONLY:-0} != 1 ]]; then
    timeout 450 "$PY" bench/model_bench.py --device cuda "$@" || status=$?
fi

# The demo profile (run.sh, where it is fixed): architectures, input, resize, stage balance, kept checkpoints.
eval "$(grep -E '^DEMO_(VIT_ARCH|EFF_ARCH|VIT_IMG_SIZE|EFF_IMG_SIZE|RESIZE|STAGE_BALANCE|VIT_KEEP|EFF_KEEP)=' run.sh)"
STAND_IN=bench/data/stand_in
"$PY" bench/stand_in_model_set.py --out "$STAND_IN" --vit-arch "$DEMO_VIT_ARCH" --eff-arch "$DEMO_EFF_ARCH" \
    --vit-epochs "${DEMO_VIT_KEEP[@]}" --eff-epochs "${DEMO_EFF_KEEP[@]}" \
    --vit-img-size "${DEMO_VIT_IMG_SIZE[@]}" --eff-img-size "${DEMO_EFF_IMG_SIZE[@]}" \
    --resize "$DEMO_RESIZE" --stage-balance "$DEMO_STAGE_BALANCE"
# every core renders (one night each) and feeds the GPU; the figure stays out of docs/ (the stand-in's stages);
# no YASA: its venv would need the package index, which the machine cannot reach
timeout 300 "$PY" bench/cohort_bench.py --weights-dir "$STAND_IN" --device cuda --workers "$(nproc)" \
    --result bench/results/cohort_cuda.json --figure bench/data/cohort_cuda_first_night.png --no-yasa || {
    code=$?
    [[ $status -ne 0 ]] || status=$code
}
exit "$status"
