"""Time blend.py and postprocess.py as whole commands on a challenge-sized test set.

Writes a fake data set with the challenge's sizes (a test CSV of 200
recordings and 138,925 rows, a training CSV of 800 recordings of about 731
rows, the test answers) and fake model dumps: stage sequences drawn from a
sleep-like Markov chain, probabilities that favour the true stage with
noise, so that blending and post-processing have something to do. No
images are written; blend and post-processing never read them.

Then runs, each ``--repeats`` times (the fastest kept): ``blend.py``,
``postprocess.py`` as a challenge user runs it (no option: the rules, the
submission, then every recording's table, EDF+ annotations and statistics),
``postprocess.py`` with ``rules``, ``hmm`` and ``none`` (the submission only:
``--no-recordings``), ``blend.py --tune``
and ``evaluate.py``, and a Python interpreter that only imports NumPy (the
floor no command can go under); and, in process, the reading of the
training CSV (most of what ``hmm`` adds to ``rules``). Figures are printed as seconds and as
ratios measured in the same run (to the 2-s budget, and to a per-position
Python loop over the rules, the original's way, which also cross-checks the
vectorised rules) and written to ``<work>/postprocess_bench.json``; and, in
process, the time one hypnogram figure takes to draw (``--figures``).

    python bench/postprocess_bench.py            # about a minute on 2 cores
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.output_names import blend_csv_path, dump_path, report_dir, submission_path, valid_csv_path
from sleepstaging.scoring.rules import RULES, apply_rules

REPO = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--work", type=Path, default=REPO / "bench" / "data" / "postprocess", help="scratch folder")
parser.add_argument("--test-recordings", type=int, default=200)
parser.add_argument("--test-rows", type=int, default=138_925)
parser.add_argument("--train-recordings", type=int, default=800)
parser.add_argument("--train-rows-per-recording", type=int, default=731)
parser.add_argument("--valid-recordings", type=int, default=160, help="training recordings also given valid dumps")
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--seed", type=int, default=0)

VIT, EFF = "vit_base_patch16_224", "tf_efficientnet_b4_ns"
# Sleep-like stage dynamics (rows: from Wake, N1, N2, N3, REM), per 30-s epoch.
TRANSITION = np.array([
    [0.90, 0.08, 0.01, 0.00, 0.01],
    [0.06, 0.60, 0.30, 0.00, 0.04],
    [0.01, 0.02, 0.92, 0.03, 0.02],
    [0.01, 0.00, 0.06, 0.93, 0.00],
    [0.02, 0.03, 0.02, 0.00, 0.93],
])


def stage_sequences(lengths, rng) -> np.ndarray:
    """Concatenated Markov-chain stage sequences of the given lengths, each starting awake."""
    chunks = []
    for length in lengths:
        states = np.empty(length, dtype=np.int64)
        states[0] = 0
        draws = rng.random(length)
        cumulative = TRANSITION.cumsum(axis=1)
        for t in range(1, length):
            states[t] = min(np.searchsorted(cumulative[states[t - 1]], draws[t]), 4)
        chunks.append(states)
    return np.concatenate(chunks)


def fake_probabilities(labels, strength, log_priors, rng) -> np.ndarray:
    """float32 [rows, 5]: softmax of noise, ``strength`` on the true stage, and the log priors.

    The priors make them posteriors, as a trained classifier's are; the
    hmm divides them out again.
    """
    logits = rng.normal(size=(len(labels), 5)) * 1.2 + log_priors
    logits[np.arange(len(labels)), labels] += strength
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def split_rows(total, parts) -> list:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def make_set(args, data, outputs, rng) -> dict:
    """Write the fake CSVs and dumps; return their sizes."""
    def rows_of(prefix, lengths):
        ids, idnums = [], []
        for number, length in enumerate(lengths):
            recording = f"{prefix}{number:04d}"
            ids += [recording] * length
            idnums += [psg_layout.image_name(recording, epoch) for epoch in range(4, 4 + length)]
        return ids, idnums

    test_lengths = split_rows(args.test_rows, args.test_recordings)
    test_ids, test_idnums = rows_of("T", test_lengths)
    test_labels = stage_sequences(test_lengths, rng)
    script_io.write_csv_rows(data / psg_layout.TEST_CSV, zip(test_ids, test_idnums))
    script_io.write_csv_rows(data / psg_layout.TEST_LABELS_CSV,
                              zip(test_ids, test_idnums, (psg_layout.STAGES[s] for s in test_labels)))
    train_lengths = [args.train_rows_per_recording] * args.train_recordings
    train_ids, train_idnums = rows_of("A", train_lengths)
    train_labels = stage_sequences(train_lengths, rng)
    script_io.write_csv_rows(data / psg_layout.TRAIN_CSV,
                              zip(train_ids, train_idnums, (psg_layout.STAGES[s] for s in train_labels)))
    valid_rows = args.valid_recordings * args.train_rows_per_recording
    script_io.write_csv_rows(valid_csv_path(outputs, 0), zip(
        train_ids[:valid_rows], train_idnums[:valid_rows], (psg_layout.STAGES[s] for s in train_labels[:valid_rows])))
    log_priors = np.log(np.bincount(train_labels, minlength=5) / len(train_labels))
    for labels, split in ((test_labels, "test"), (train_labels[:valid_rows], "valid")):
        np.save(dump_path(outputs, VIT, 0, [4], split), fake_probabilities(labels, 1.2, log_priors, rng))
        np.save(dump_path(outputs, EFF, 0, [1], split), fake_probabilities(labels, 1.6, log_priors, rng))
    return {"test_rows": len(test_ids), "test_recordings": args.test_recordings,
            "train_rows": len(train_ids), "valid_rows": valid_rows}


def time_command(command, repeats) -> float:
    """Fastest wall time in seconds of ``repeats`` runs of a command (which must succeed)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def rules_by_position(stages, recording_ids) -> np.ndarray:
    """The rules one position at a time, the original's way, but within recordings."""
    before, after = list(stages), list(stages)
    for i in range(len(before)):
        for pattern, position, new_stage in RULES:
            end = i + len(pattern)
            if tuple(before[i:end]) == pattern and len(set(recording_ids[i:end])) == 1:
                after[i + position] = new_stage
    return np.array(after)


def time_figures(folder: Path, test, stages: np.ndarray, blend_csv: Path, count: int) -> float:
    """Mean seconds to draw one recording's hypnogram figure (``postprocess.py --figures`` draws one per
    recording), over the first ``count`` recordings, after one unmeasured figure (matplotlib's imports)."""
    from sleepstaging.scoring import night_outputs
    from sleepstaging.scoring.sleep_statistics import sleep_statistics
    probabilities = np.load(blend_csv.with_suffix(".npy"))
    ids = np.array(test.recording_ids)
    recordings = list(dict.fromkeys(test.recording_ids))[:count + 1]
    times = []
    for k, recording_id in enumerate(recordings):
        rows = np.flatnonzero(ids == recording_id)
        onsets = np.arange(len(rows)) * 30.0
        statistics = sleep_statistics(stages[rows])
        start = time.perf_counter()
        night_outputs.plot_recording(folder / f"{recording_id}-figure.png", recording_id, onsets, stages[rows],
                                     probabilities[rows], None, 30.0, statistics)
        if k:
            times.append(time.perf_counter() - start)
    return float(np.mean(times))


def main() -> None:
    args = parser.parse_args()
    print("config: " + json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}))
    data, outputs = args.work / "DATA", args.work / "outputs"
    sizes = make_set(args, data, outputs, np.random.default_rng(args.seed))
    print(f"fake set: {sizes}")

    python = sys.executable
    blend_csv = blend_csv_path(outputs, "sqrt", [4], [1])
    commands = {
        "python -c 'import numpy' (floor)": [python, "-c", "import numpy"],
        "blend.py": [python, "blend.py", "--data-root", data, "--out", outputs, "--quiet"],
        "postprocess.py (bare: rules, per-recording outputs without figures)": [
            python, "postprocess.py", "--data-root", data, "--in", blend_csv, "--out", outputs / "files_post_bare.csv",
            "--recordings-out", outputs / "recordings"],
        "postprocess.py --method rules": [python, "postprocess.py", "--data-root", data, "--in", blend_csv,
                                          "--out", submission_path(outputs), "--method", "rules", "--no-recordings"],
        "postprocess.py --method hmm": [python, "postprocess.py", "--data-root", data, "--in", blend_csv,
                                        "--out", outputs / "files_post_hmm.csv", "--method", "hmm", "--no-recordings"],
        "postprocess.py --method none": [python, "postprocess.py", "--data-root", data, "--in", blend_csv,
                                         "--out", outputs / "files_post_none.csv", "--method", "none", "--no-recordings"],
        "blend.py --tune": [python, "blend.py", "--out", outputs, "--tune", "--quiet"],
        "evaluate.py": [python, "evaluate.py", "--data-root", data, "--pred", submission_path(outputs),
                        "--outputs", outputs, "--out", report_dir(outputs), "--quiet"],
    }
    seconds = {name: time_command(command, args.repeats) for name, command in commands.items()}

    # what the hmm command spends on reading the training labels (psg_layout.read_epoch_csv)
    start = time.perf_counter()
    psg_layout.read_epoch_csv(data / psg_layout.TRAIN_CSV, with_labels=True)
    seconds["read_epoch_csv of the training CSV (in process)"] = time.perf_counter() - start
    test = psg_layout.read_epoch_csv(data / psg_layout.TEST_CSV, with_labels=False)
    stages = np.array([psg_layout.STAGE_TO_INT[line] for line in blend_csv.read_text().split()])
    start = time.perf_counter()
    vectorised = apply_rules(stages, test.recording_ids)[0]
    seconds["apply_rules (in process)"] = time.perf_counter() - start
    start = time.perf_counter()
    by_position = rules_by_position(stages, test.recording_ids)
    seconds["rules one position at a time (in process)"] = time.perf_counter() - start
    if not np.array_equal(vectorised, by_position):
        raise SystemExit("error: vectorised rules differ from the per-position loop")

    figure_seconds = time_figures(outputs / "recordings", test, stages, blend_csv, count=5)
    seconds["one hypnogram figure (in process, mean of 5)"] = figure_seconds

    loop = seconds["rules one position at a time (in process)"]
    results = {"sizes": sizes, "seconds": seconds,
               "ratio_to_2s_budget": {k: v / 2.0 for k, v in seconds.items()},
               "speedup_of_apply_rules_over_position_loop": loop / seconds["apply_rules (in process)"]}
    for name, value in seconds.items():
        print(f"{name:<50} {value:7.3f} s   {value / 2.0:5.2f} x the 2-s budget")
    print(f"apply_rules is {results['speedup_of_apply_rules_over_position_loop']:.0f} x faster than the "
          f"per-position loop, same output")
    report = args.work / "postprocess_bench.json"
    with script_io.atomic_path(report) as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    print(f"{report} is saved")


if __name__ == "__main__":
    main()
