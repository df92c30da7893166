#!/usr/bin/env bash
# bash run.sh setup | test [pytest args] | demo
#   setup: create .venv/ with Python 3.11 and install requirements.txt (fast when done)
#   test:  setup, then the test suite on the CPU
#   demo:  setup, then the whole flow on the embedded synthetic data set
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"
STAMP="$VENV/.requirements.sha256"

# ---------------------------------------------------------------------------
# The demo profile: everything in which the demo differs from the original's full
# configuration. Same scripts, same code paths; only these arguments differ.
# ---------------------------------------------------------------------------
DEMO_DIR=demo                        # demo/DATA, demo/weights, demo/outputs, demo/cache, demo/logs
DEMO_DATA_ARGS=(--train-subjects 16 --test-subjects 4 --hours 6.1 --seed 0)   # the test set: the default 4 nights
DEMO_VIT_ARCH=vit_tiny_patch16_224   # the original: vit_base_patch16_224
DEMO_EFF_ARCH=tf_efficientnet_b0     # the original: tf_efficientnet_b4_ns
DEMO_VIT_IMG_SIZE=(96 64)            # HEIGHT WIDTH; the original: 224 x 224 for both. The 21 signal bands 4.6 px
DEMO_EFF_IMG_SIZE=(96 48)            #   tall instead of 3 at 64 x 64: +0.02-0.03 validation macro-F1 for each
                                     #   network; the ViT's 16 px patches gain from 64 columns (+0.02), the
                                     #   EfficientNet does not (docs/demo.md)
DEMO_RESIZE=area                     # the original: linear, which at 64 px keeps about 1 row in 4 of the thin traces
DEMO_VIT_LR=1e-4                     # the original's; 5e-4 leaves the ViT stuck at the class prior
DEMO_VIT_INPUT_NORM=data             # the original: imagenet. From random initialisation the ViT learns far more
                                     #   when its input is rescaled to these dark images' own mean and spread
                                     #   (docs/demo.md); the EfficientNet's batch norm does that already
DEMO_EFF_LR=1e-3                     # the original: 1e-4, which learns too slowly from random initialisation
DEMO_STAGE_BALANCE=0.5               # the original: 0 (each row once per epoch); 0.5: N1 drawn 2.4 times as often
                                     #   as it occurs, else the networks hardly ever predict it (6 % of the epochs)
DEMO_AUGMENT=(--no-fmix)             # the original: FMix on; in a few epochs from scratch it costs the
                                     #   EfficientNet 0.06 validation macro-F1 (docs/demo.md)
DEMO_VIT_AUGMENT=(--no-holes)        # the original: CoarseDropout and Cutout on, 8 holes of 8 px each, up to 2 %
                                     #   of a 224-px image and 17 % of a 96 x 64 one; the ViT learns more without
                                     #   them, the EfficientNet less (docs/demo.md)
DEMO_BATCH=(--batch-size 16 --accum-iter 1)   # the original: 32 x 2; more optimizer steps on a small data set
DEMO_VIT_EPOCHS=3                    # the original: 10 for both; the two trainers run side by side,
DEMO_EFF_EPOCHS=2                    #   and these end at about the same time
# One cosine cycle over each run (T_0 = 2 x epochs: the original steps the scheduler twice per
# epoch). The checkpoints kept (the original kept epochs 4 and 1): each network's last, at the end
# of its cosine cycle. Averaging the ViT's last two lowered the blend's validation macro-F1 in each
# of three runs (0.868 against 0.860 here; docs/demo.md), as the EfficientNet's first epoch does.
DEMO_VIT_KEEP=(2)
DEMO_EFF_KEEP=(1)
DEMO_GEN_WORKERS=2                   # processes drawing the synthetic images
DEMO_LOADER_WORKERS=0                # the cached data path needs no loader processes on 2 cores
# The two trainers run at the same time with one torch thread each: on 2 cores that trains more
# images per second than one 2-thread trainer after the other (a second torch thread speeds each of
# these small models by well under 2x). Each is deterministic whatever runs beside it.
DEMO_TRAINER_THREADS=1

find_python() {
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Python 3.11 is needed to create $VENV (found none on PATH)" >&2
    exit 2
}

# The review page's browser tests drive Debian's Chromium (tests/scoring/test_review_browser.py); installed
# here when missing and this runs as root (CI's fresh machine), else the tests say loudly they were skipped.
install_chromium() {
    if [[ -x /usr/bin/chromium ]]; then
        return 0
    fi
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ||
            echo "WARNING: apt-get install chromium failed: the review page's browser tests will be skipped" >&2
    else
        echo "WARNING: no /usr/bin/chromium and no root to install it: the review page's browser tests will be skipped" >&2
    fi
}

setup() {
    local want
    want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
    if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
        return 0
    fi
    if [[ ! -x "$PY" ]]; then
        "$(find_python)" -m venv "$VENV"
    fi
    if ! "$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt; then
        local free
        free=$(df -Pk "$VENV" | awk 'NR == 2 { printf "%.1f", $4 / 1048576 }')
        echo "error: installing requirements.txt into $VENV failed (pip says why above); $free GiB left free" \
             "on its disk, where the venv takes about 6.3 GiB (torch's CUDA build)" >&2
        exit 2
    fi
    # the library (sleepstaging/), importable from the scripts, benches and tests wherever they run
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
    echo "$want" > "$STAMP"
}

run_tests() {
    setup
    install_chromium
    "$PY" -m pytest -q tests "$@"
}

print_profile() {
    echo "demo profile: data ${DEMO_DATA_ARGS[*]} -> $DEMO_DIR/DATA"
    echo "  model 1: $DEMO_VIT_ARCH, model 2: $DEMO_EFF_ARCH, images ${DEMO_VIT_IMG_SIZE[0]}x${DEMO_VIT_IMG_SIZE[1]} and"
    echo "  ${DEMO_EFF_IMG_SIZE[0]}x${DEMO_EFF_IMG_SIZE[1]} px, height x width (resize $DEMO_RESIZE),"
    echo "  lr $DEMO_VIT_LR and $DEMO_EFF_LR, ${DEMO_BATCH[*]}, $DEMO_VIT_EPOCHS and $DEMO_EFF_EPOCHS epochs (one cosine cycle each),"
    echo "  the ViT's input rescaled to the images' own statistics (--input-norm $DEMO_VIT_INPUT_NORM),"
    echo "  --stage-balance $DEMO_STAGE_BALANCE ${DEMO_AUGMENT[*]}, the ViT ${DEMO_VIT_AUGMENT[*]};"
    echo "  both trained side by side, $DEMO_TRAINER_THREADS torch thread each;"
    echo "  checkpoints averaged: epochs ${DEMO_VIT_KEEP[*]} and ${DEMO_EFF_KEEP[*]}, fold 0 of 5"
}

run_demo() {
    local start=$SECONDS
    setup
    print_profile
    local data="$DEMO_DIR/DATA" weights="$DEMO_DIR/weights" out="$DEMO_DIR/outputs"
    local models=(--vit-arch "$DEMO_VIT_ARCH" --eff-arch "$DEMO_EFF_ARCH"
                  --vit-epochs "${DEMO_VIT_KEEP[@]}" --eff-epochs "${DEMO_EFF_KEEP[@]}")
    local train=(--data-root "$data" --weights-dir "$weights" --cache-dir "$DEMO_DIR/cache"
                 --resize "$DEMO_RESIZE" --stage-balance "$DEMO_STAGE_BALANCE"
                 --workers "$DEMO_LOADER_WORKERS"
                 --pretrained none "${DEMO_BATCH[@]}" "${DEMO_AUGMENT[@]}")
    local names  # output file names, from sleepstaging/output_names.py: tuned blend settings, submission, report folder
    mapfile -t names < <("$PY" -c 'import sys; from sleepstaging import output_names as n
print(n.tune_json_path(sys.argv[1]), n.submission_path(sys.argv[1]), n.report_dir(sys.argv[1]), sep="\n")' "$out")
    local tune_json=${names[0]} submission=${names[1]} report=${names[2]}

    step "1/6 synthetic data"
    "$PY" make_synthetic.py --out "$data" "${DEMO_DATA_ARGS[@]}" --workers "$DEMO_GEN_WORKERS"
    step "2/6 train model 1 (ViT) and model 2 (EfficientNet), side by side"
    train_side_by_side "$DEMO_DIR/logs" \
        vit "$PY" main_vit_rgb.py "${train[@]}" --model-arch "$DEMO_VIT_ARCH" --lr "$DEMO_VIT_LR" \
            --img-size "${DEMO_VIT_IMG_SIZE[@]}" --input-norm "$DEMO_VIT_INPUT_NORM" "${DEMO_VIT_AUGMENT[@]}" \
            --epochs "$DEMO_VIT_EPOCHS" --t0 $((2 * DEMO_VIT_EPOCHS)) -- \
        eff "$PY" main_eff.py "${train[@]}" --model-arch "$DEMO_EFF_ARCH" --lr "$DEMO_EFF_LR" \
            --img-size "${DEMO_EFF_IMG_SIZE[@]}" --epochs "$DEMO_EFF_EPOCHS" --t0 $((2 * DEMO_EFF_EPOCHS))
    step "3/6 per-model probabilities"
    "$PY" infer_blend.py --data-root "$data" --weights-dir "$weights" --out "$out" "${models[@]}" \
        --cache-dir "$DEMO_DIR/cache" --workers "$DEMO_LOADER_WORKERS"
    step "4/6 blend (weight tuned on validation); the model set: what stage_edf.py needs, in $weights"
    "$PY" blend.py --data-root "$data" --out "$out" "${models[@]}" --tune
    "$PY" model_set.py --data-root "$data" --weights-dir "$weights" --outputs "$out"
    "$PY" blend.py --data-root "$data" --out "$out" "${models[@]}" --from-tune "$tune_json"
    local blend_csv  # the tuned method's blend of the kept epochs, as the model set records them
    blend_csv=$("$PY" -c 'import sys; from sleepstaging import output_names as n; from sleepstaging.scoring import model_set; r = model_set.read_model_set(sys.argv[2])
print(n.blend_csv_path(sys.argv[1], r["blend"]["method"], r["vit"]["epochs"], r["eff"]["epochs"]))' "$out" "$weights")
    step "5/6 context post-processing: the original's rules (the submission), the model set's hmm"
    "$PY" postprocess.py --data-root "$data" --in "$blend_csv" --out "$submission"
    "$PY" postprocess.py --data-root "$data" --in "$blend_csv" --out "$out/files_hmm.csv" \
        --method hmm --model-set "$weights" --no-recordings --quiet
    step "6/6 evaluation"
    local report_of
    for report_of in "$blend_csv:$out/report_blend" "$submission:$report" "$out/files_hmm.csv:$out/report_hmm"; do
        "$PY" evaluate.py --data-root "$data" --pred "${report_of%%:*}" --out "${report_of#*:}" \
            --outputs "$out" --weights-dir "$weights" "${models[@]}" --quiet
    done
    "$PY" - "$tune_json" "$out/report_blend" "$report" "$out/report_hmm" "$weights/model_set.json" \
        "$submission" $((SECONDS - start)) <<'PY'
import json, sys
tune_json, report_blend, report, report_hmm, model_set_json, submission, seconds = *sys.argv[1:7], int(sys.argv[7])
tuned = json.load(open(tune_json))
before = json.load(open(f"{report_blend}/metrics.json"))
after = json.load(open(f"{report}/metrics.json"))
hmm = json.load(open(f"{report_hmm}/metrics.json"))
record = json.load(open(model_set_json))
weight, chosen = record["hmm"]["transition_weight"], record["postprocess"]
table = {entry["step"]: entry["macro_f1"] for entry in after["validation"]["table"]}
effective = tuned.get("effective_vit_weight")  # None for log1p and expm1: no such weight
share = "" if effective is None else f", ViT share {effective:.2f}"
rows = [
    ("model 1 validation macro-F1", f"{table['model 1 alone']:.3f}"),
    ("model 2 validation macro-F1", f"{table['model 2 alone']:.3f}"),
    (f"blend ({tuned['method']}, w={tuned['ens_weight']:.3g}{share}), validation macro-F1",
     f"{tuned['val_macro_f1']:.3f}"),
    ("test macro-F1 before post-processing", f"{before['macro_f1']:.3f}"),
    ("test kappa before post-processing", f"{before['cohen_kappa']:.3f}"),
    ("test macro-F1 after the original's rules", f"{after['macro_f1']:.3f}"),
    ("test kappa after the original's rules", f"{after['cohen_kappa']:.3f}"),
    (f"test macro-F1 after the model set's hmm (transition weight {weight:g})", f"{hmm['macro_f1']:.3f}"),
    ("test kappa after the model set's hmm", f"{hmm['cohen_kappa']:.3f}"),
    ("what new nights get (the model set's choice on validation)", chosen),
]
width = max(len(name) for name, _ in rows)
print()
for name, value in rows:
    print(f"{name:<{width}}  {value}")
print(f"\nsubmission: {submission}   report: {report}/report.md   ({seconds // 60} min {seconds % 60} s)")
PY
}

# train_side_by_side LOG_DIR NAME1 COMMAND1... -- NAME2 COMMAND2...: both commands at once, each with
# DEMO_TRAINER_THREADS torch threads and its output in LOG_DIR/NAME.log; then each one's epoch lines.
# Fails (showing the log's end) if either fails. Both may build the same image cache at once: each
# recording is written under a temporary name and renamed, and both write the same bytes.
train_side_by_side() {
    local logs=$1 first=$2; shift 2
    local first_command=()
    while [[ $1 != -- ]]; do first_command+=("$1"); shift; done
    shift
    local second=$1; shift
    mkdir -p "$logs"
    echo "logs: $logs/$first.log, $logs/$second.log"
    OMP_NUM_THREADS=$DEMO_TRAINER_THREADS "${first_command[@]}" > "$logs/$first.log" 2>&1 &
    local first_pid=$!
    OMP_NUM_THREADS=$DEMO_TRAINER_THREADS "$@" > "$logs/$second.log" 2>&1 &
    local second_pid=$! failed=0 name pid
    for name in "$first" "$second"; do
        pid=$first_pid; [[ $name == "$second" ]] && pid=$second_pid
        if wait "$pid"; then
            echo "-- $name:"; grep -E '^epoch [0-9]+:' "$logs/$name.log" || true
        else
            echo "-- $name failed; the end of $logs/$name.log:" >&2; tail -n 5 "$logs/$name.log" >&2; failed=1
        fi
    done
    return $failed
}

# step TITLE: the step's heading, with the time since the script started (where a slow machine loses its time)
step() {
    echo
    echo "== $1 == ($((SECONDS / 60)) min $((SECONDS % 60)) s in)"
}

case "${1:-}" in
    setup) setup ;;
    test) shift; run_tests "$@" ;;
    demo) run_demo ;;
    *) echo "usage: bash run.sh setup | test [pytest args] | demo" >&2; exit 2 ;;
esac
