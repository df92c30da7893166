"""Do trained models stage nights of subjects they never saw? Scored through the path a user takes.

For each generator seed of ``--seeds`` (the demo trains on seed 0's
subjects, so every other seed's are new):

1. ``make_synthetic.py --edf`` makes ``--nights`` test nights of that seed
   (4, as the demo's test set)
   (and the one training night the generator insists on, unused); their
   EDF files are copied alone into ``<work>/seed_<s>/nights/``: the
   hypnograms stay behind;
2. ``stage_edf.py --edf <nights> --weights-dir W --out <scored>``, with no
   other option: the model set's models, blend and post-processing, as a
   user scoring new nights gets them;
3. each night's scored hypnogram table (``stage_before``: the blend;
   ``stage_after``: after the post-processing) against the withheld stages,
   over the epochs the generator labels.

Beside them, the in-distribution test set (``--data-root``, the data the
models were trained with: its test nights, same subjects' generator, never
trained on): the blend CSV in ``--outputs`` post-processed as the model
set says (``postprocess.py --method hmm --model-set W``), which gives the
same stages as stage_edf.py on the same nights (``bench/score_night.py``
checks that).

Reports, for each set, for all new subjects pooled, and for both columns,
macro-F1, Cohen's kappa, per-stage F1, and the mean of each night's sleep
statistics (awakenings, stage shifts, TST, WASO) true against predicted;
writes
``bench/results/generalisation.json`` (``--result``).

    python bench/generalisation.py --weights-dir demo/weights --data-root demo/DATA --outputs demo/outputs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy as np


from sleepstaging.scoring import model_set
from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.scoring.sleep_statistics import sleep_statistics
from sleepstaging.scoring.evaluation import compute_metrics, read_answers
from sleepstaging.output_names import blend_csv_path
from cpu_info import cpu_description
from score_night import run, scored_stages

REPO = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--weights-dir", type=Path, default=Path("demo/weights"), help="a recorded model set")
parser.add_argument("--data-root", type=Path, default=Path("demo/DATA"),
                    help="the models' data set, whose test nights are the in-distribution set")
parser.add_argument("--outputs", type=Path, default=Path("demo/outputs"), help="the models' blend of that test set")
parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="generator seeds of the new subjects")
parser.add_argument("--nights", type=int, default=4, help="test nights per seed (the demo's test set has 4)")
parser.add_argument("--hours", type=float, default=6.1, help="mean scored length of a night, as the demo's")
parser.add_argument("--workers", type=int, default=2, help="processes making and rendering nights")
parser.add_argument("--work", type=Path, default=REPO / "bench" / "data" / "generalisation", help="scratch folder")
parser.add_argument("--result", type=Path, default=REPO / "bench" / "results" / "generalisation.json")

STATISTICS = ("awakenings", "stage_shifts", "TST", "WASO")


def agreement(truth: np.ndarray, predicted: np.ndarray, recording_ids) -> dict:
    """Macro-F1, kappa, per-stage F1, and the nights' mean statistics, true and predicted."""
    metrics = compute_metrics(truth, predicted, recording_ids)
    recordings = np.asarray(recording_ids)
    nights = list(dict.fromkeys(recording_ids))
    means = {}
    for name, series in (("true", truth), ("predicted", predicted)):
        per_night = [sleep_statistics(series[recordings == night]) for night in nights]
        means[name] = {key: round(float(np.mean([night[key] for night in per_night])), 2) for key in STATISTICS}
    return {"nights": len(nights), "epochs": int(len(truth)), "macro_f1": round(metrics["macro_f1"], 4),
            "cohen_kappa": round(metrics["cohen_kappa"], 4),
            "f1": {stage: round(entry["f1"], 4) for stage, entry in metrics["per_class"].items()},
            "statistics_mean": means}


def new_subjects(seed: int, args) -> dict:
    """Make ``args.nights`` nights of ``seed``, score them with stage_edf.py alone, compare with their stages."""
    work = args.work / f"seed_{seed}"
    shutil.rmtree(work, ignore_errors=True)
    data, nights, scored = work / "DATA", work / "nights", work / "scored"
    run("make_synthetic.py", "--out", data, "--train-subjects", 1, "--test-subjects", args.nights,
        "--hours", args.hours, "--seed", seed, "--edf", "--workers", args.workers, "--quiet")
    test = psg_layout.read_epoch_csv(data / psg_layout.TEST_CSV, with_labels=False)
    truth = read_answers(data / psg_layout.TEST_LABELS_CSV, test)
    nights.mkdir(parents=True)
    for recording_id in dict.fromkeys(test.recording_ids):
        shutil.copy(data / "edf" / f"{recording_id}.edf", nights / f"{recording_id}.edf")  # hypnogram withheld
    seconds = run("stage_edf.py", "--edf", nights, "--weights-dir", args.weights_dir, "--out", scored,
                  "--workers", args.workers, "--quiet")
    ids = np.asarray(test.recording_ids)
    predicted = {}
    for column in ("stage_before", "stage_after"):
        predicted[column] = np.empty(len(test), dtype=np.int64)
        for recording_id in dict.fromkeys(test.recording_ids):
            rows = np.flatnonzero(ids == recording_id)
            predicted[column][rows] = scored_stages(scored, recording_id, [test.idnums[r] for r in rows], column)
    found = {"seed": seed, "stage_edf_seconds": round(seconds, 1),
             "blend": agreement(truth, predicted["stage_before"], test.recording_ids),
             "post-processed": agreement(truth, predicted["stage_after"], test.recording_ids)}
    return found, (truth, predicted, [f"{seed}:{r}" for r in test.recording_ids])


def in_distribution(args, record: dict) -> dict:
    """The models' own test nights: their blend, and the blend post-processed as the model set says."""
    test = psg_layout.read_epoch_csv(args.data_root / psg_layout.TEST_CSV, with_labels=False)
    truth = read_answers(args.data_root / psg_layout.TEST_LABELS_CSV, test)
    models = record["models"]
    blend_csv = blend_csv_path(args.outputs, record["blend"]["method"], models["vit_epochs"], models["eff_epochs"])
    out = args.work / "in_distribution" / "files_post.csv"
    shutil.rmtree(out.parent, ignore_errors=True)
    method = record["postprocess"]  # none, rules or hmm; only the hmm reads the model set
    run("postprocess.py", "--data-root", args.data_root, "--in", blend_csv, "--out", out, "--method", method,
        *(["--model-set", args.weights_dir] if method == "hmm" else []), "--no-recordings", "--quiet")

    def stages(path: Path) -> np.ndarray:
        return np.array([psg_layout.STAGE_TO_INT[line] for line in path.read_text().split()], dtype=np.int64)

    return {"data_root": str(args.data_root), "blend": agreement(truth, stages(blend_csv), test.recording_ids),
            "post-processed": agreement(truth, stages(out), test.recording_ids)}


def summary_line(name: str, found: dict) -> str:
    after, before = found["post-processed"], found["blend"]
    stages = " ".join(f"{stage} {value:.3f}" for stage, value in after["f1"].items())
    true, predicted = after["statistics_mean"]["true"], after["statistics_mean"]["predicted"]
    return (f"{name}: {after['nights']} nights, macro-F1 {after['macro_f1']:.3f} (blend {before['macro_f1']:.3f}), "
            f"kappa {after['cohen_kappa']:.3f} | F1 {stages} | awakenings {predicted['awakenings']:.1f} "
            f"(true {true['awakenings']:.1f}), stage shifts {predicted['stage_shifts']:.0f} "
            f"(true {true['stage_shifts']:.0f})")


def main() -> None:
    args = parser.parse_args()
    record = model_set.read_model_set(args.weights_dir)
    if record is None:
        raise SystemExit(f"no model set in {args.weights_dir}: run model_set.py (bash run.sh demo does)")
    result = {"command": "python bench/generalisation.py " + " ".join(sys.argv[1:]),
              "weights_dir": str(args.weights_dir), "postprocess": record["postprocess"],
              "transition_weight": record["hmm"]["transition_weight"],
              "in_distribution": in_distribution(args, record),
              "new_subjects": [],
              "machine": {"cpu": cpu_description(), "cpus": os.cpu_count(), "python": platform.python_version()}}
    pooled = {"truth": [], "stage_before": [], "stage_after": [], "ids": []}
    for seed in args.seeds:
        found, (truth, predicted, ids) = new_subjects(seed, args)
        result["new_subjects"].append(found)
        for key, values in (("truth", truth), ("stage_before", predicted["stage_before"]),
                            ("stage_after", predicted["stage_after"]), ("ids", ids)):
            pooled[key].append(np.asarray(values))
    truth, ids = np.concatenate(pooled["truth"]), list(np.concatenate(pooled["ids"]))
    result["new_subjects_pooled"] = {
        "blend": agreement(truth, np.concatenate(pooled["stage_before"]), ids),
        "post-processed": agreement(truth, np.concatenate(pooled["stage_after"]), ids)}
    result["gap_to_in_distribution"] = round(result["in_distribution"]["post-processed"]["macro_f1"]
                                             - result["new_subjects_pooled"]["post-processed"]["macro_f1"], 4)
    args.result.parent.mkdir(parents=True, exist_ok=True)
    with script_io.atomic_path(args.result) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(summary_line("in-distribution test nights", result["in_distribution"]))
    for entry in result["new_subjects"]:
        print(summary_line(f"seed {entry['seed']} (new subjects)", entry))
    print(summary_line("new subjects, all seeds pooled", result["new_subjects_pooled"]))
    print(f"the new subjects' pooled macro-F1 is {result['gap_to_in_distribution']:.3f} below the in-distribution "
          f"nights'; {args.result} is saved")


if __name__ == "__main__":
    main()
