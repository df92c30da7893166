"""Score one synthetic 6-hour night with stage_edf.py and check it against the layout route.

The models, kept epochs, blend and post-processing are the weights
folder's model set (``model_set.json``), as stage_edf.py reads it.

1. ``make_synthetic.py --edf`` makes one training and one test night
   (``--seed``, ``--hours``; seed 1 by default, so the demo's models, trained
   on seed 0's nights, have never seen it); the test night's EDF is copied
   alone into ``<work>/night/``: its hypnogram is withheld.
2. The stage route: ``stage_edf.py --edf <work>/night/<ID>.edf`` (timed as
   a whole command, Python start-up and imports included).
3. The layout route on the same night in the challenge layout (the
   generator's own images): ``infer_blend.py``, ``blend.py``,
   ``postprocess.py``, ``evaluate.py``.
4. Macro-F1 and Cohen's kappa of both routes against the withheld
   hypnogram, over the epochs it scores (the test CSV's rows), and how many
   of those epochs the two routes stage differently.

Writes ``bench/results/score_night.json`` (``--result``) and prints it.

    python bench/score_night.py --weights-dir demo/weights
    python bench/score_night.py --weights-dir demo/weights --postprocess rules --result bench/results/score_night_rules.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.scoring.evaluation import compute_metrics
from sleepstaging.scoring import model_set
from sleepstaging.output_names import blend_csv_path, report_dir, submission_path
from cpu_info import cpu_description

REPO = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--weights-dir", type=Path, required=True, help="the models' checkpoints and configurations")
parser.add_argument("--postprocess", default=None,
                    help="rules, hmm or none (default: the model set's, as stage_edf.py; both routes use it)")
parser.add_argument("--hours", type=float, default=6.0, help="scored length of the night")
parser.add_argument("--seed", type=int, default=1, help="make_synthetic.py seed (the demo trains on seed 0)")
parser.add_argument("--workers", type=int, default=2, help="render processes and DataLoader workers")
parser.add_argument("--work", type=Path, default=REPO / "bench" / "data" / "score_night", help="scratch folder")
parser.add_argument("--result", type=Path, default=REPO / "bench" / "results" / "score_night.json")


def run(*args) -> float:
    """Run ``python args...`` from the repository; return its wall time in seconds (raise on failure)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONHASHSEED="0"))
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def scored_stages(scored: Path, recording_id: str, idnums, column: str) -> np.ndarray:
    """A column (``stage_before`` or ``stage_after``) of stage_edf.py's hypnogram table, at the epochs ``idnums``."""
    with open(scored / recording_id / f"{recording_id}-hypnogram.csv", newline="") as handle:
        by_epoch = {int(row["epoch"]): psg_layout.STAGE_TO_INT[row[column]] for row in csv.DictReader(handle)}
    return np.array([by_epoch[psg_layout.epoch_number_of(idnum)] for idnum in idnums], dtype=np.int64)


def make_night(args) -> tuple:
    """One synthetic night with its EDF alone in a folder (its hypnogram withheld): (data, test, answers, ID, folder)."""
    data = args.work / "DATA"
    run("make_synthetic.py", "--out", data, "--train-subjects", 1, "--test-subjects", 1, "--hours", args.hours,
        "--seed", args.seed, "--edf", "--workers", 2, "--quiet")
    test = psg_layout.read_epoch_csv(data / psg_layout.TEST_CSV, with_labels=False)
    answers = psg_layout.read_epoch_csv(data / psg_layout.TEST_LABELS_CSV, with_labels=True)
    (recording_id,) = set(test.recording_ids)
    night = args.work / "night"
    shutil.rmtree(night, ignore_errors=True)
    night.mkdir(parents=True)
    shutil.copy(data / "edf" / f"{recording_id}.edf", night / f"{recording_id}.edf")  # the hypnogram stays behind
    return data, test, answers, recording_id, night


def layout_route(args, data: Path, record: dict, postprocess_method: str) -> tuple[dict, np.ndarray]:
    """The same night through the layout's scripts (infer_blend, blend, postprocess, evaluate): metrics, stages."""
    found, blend_settings = record["models"], record["blend"]
    models = ["--vit-arch", found["vit_arch"], "--eff-arch", found["eff_arch"], "--fold", found["fold"],
              "--vit-epochs", *found["vit_epochs"], "--eff-epochs", *found["eff_epochs"]]
    blend_args = [item for key in model_set.BLEND_KEYS for item in (f"--{key.replace('_', '-')}", blend_settings[key])]
    # both routes post-process alike: the model set's recorded hmm, or the method named
    postprocess_args = ["--method", postprocess_method,
                        *(["--model-set", args.weights_dir] if postprocess_method == "hmm" else [])]
    outputs = args.work / "outputs"
    run("infer_blend.py", "--data-root", data, "--weights-dir", args.weights_dir, "--out", outputs, *models,
        "--workers", args.workers, "--no-cache", "--quiet")
    run("blend.py", "--data-root", data, "--out", outputs, *models, *blend_args, "--quiet")
    blend_csv = blend_csv_path(outputs, blend_settings["method"], found["vit_epochs"], found["eff_epochs"])
    run("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", submission_path(outputs),
        *postprocess_args, "--no-recordings", "--quiet")
    run("evaluate.py", "--data-root", data, "--pred", submission_path(outputs), "--out", report_dir(outputs),
        "--outputs", outputs, "--weights-dir", args.weights_dir, *models, "--quiet")
    stages = np.array([psg_layout.STAGE_TO_INT[line] for line in submission_path(outputs).read_text().split()],
                      dtype=np.int64)
    return json.loads((report_dir(outputs) / "metrics.json").read_text()), stages


def main() -> None:
    args = parser.parse_args()
    work = args.work
    record = model_set.read_model_set(args.weights_dir)
    if record is None:
        raise SystemExit(f"no model set in {args.weights_dir}: run model_set.py (bash run.sh demo does)")
    postprocess_method = args.postprocess or record["postprocess"]
    data, test, answers, recording_id, night = make_night(args)

    load_before = os.getloadavg()
    stage_seconds = run("stage_edf.py", "--edf", night / f"{recording_id}.edf", "--weights-dir", args.weights_dir,
                        "--out", work / "scored", "--overwrite", *(["--postprocess", args.postprocess]
                                                                  if args.postprocess else []),
                        "--workers", args.workers, "--quiet")
    load_after = os.getloadavg()
    steps = json.loads((work / "scored" / "stage_edf.json").read_text())
    layout, layout_stages = layout_route(args, data, record, postprocess_method)
    stage_stages = scored_stages(work / "scored", recording_id, test.idnums, "stage_after")
    stage = compute_metrics(answers.labels, stage_stages, test.recording_ids)
    rendered = json.loads((work / "scored" / recording_id / f"{recording_id}-render.json").read_text())
    result = {
        "command": "python bench/score_night.py " + " ".join(sys.argv[1:]),
        "weights_dir": str(args.weights_dir), "models": record["models"], "blend": record["blend"],
        "postprocess": postprocess_method,
        "night": {"recording_id": recording_id, "seed": args.seed, "hours": args.hours,
                  "epochs_rendered": rendered["epochs_rendered"], "epochs_scored_in_withheld_hypnogram": len(test)},
        "stage_edf_wall_seconds": round(stage_seconds, 2),
        "stage_edf_step_seconds": steps["step_seconds"],
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "machine": {"cpu": cpu_description(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "stage_route": {"macro_f1": stage["macro_f1"], "cohen_kappa": stage["cohen_kappa"]},
        "layout_route": {"macro_f1": layout["macro_f1"], "cohen_kappa": layout["cohen_kappa"]},
        "epochs_staged_differently": int((stage_stages != layout_stages).sum()),
        "equal": stage["macro_f1"] == layout["macro_f1"] and stage["cohen_kappa"] == layout["cohen_kappa"],
    }
    args.result.parent.mkdir(parents=True, exist_ok=True)
    with script_io.atomic_path(args.result) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))

if __name__ == "__main__":
    main()
