"""Make the embedded default data set: synthetic PSG nights in the challenge layout.

    python make_synthetic.py --out DATA --train-subjects 16 --test-subjects 4 --seed 0 [--hours 6.1] [--workers 2] [--edf]

Each recording is one night of one synthetic subject. A hypnogram is drawn
first (sleep-onset latency, NREM-REM cycles of about 90 minutes, N3 early,
REM lengthening towards morning, brief awakenings followed by N1). Every
stage sets the parameters of the physiology (the EEG's aperiodic 1/f
background, steeper with depth; alpha, theta, delta and slow waves, spindles, K-complexes, vertex waves, sawtooth waves, eye movements,
muscle tone, heart rate, breathing); these are smoothed over time so that
features fade in and out across epoch borders, and one continuous night is
generated per signal, as a recorder would store it, then cut into 30-s
epochs and drawn with ``psg_layout.render_epoch``. Subjects differ in
amplitudes, alpha and spindle frequency, noise, electrode artefacts, apnea
severity, snoring and leg movements.

Writes into ``--out``: ``trainset-for_user.csv``, ``testset-for_user.csv``,
``testset-labels.csv`` (answers, for scoring only), ``hypnodensity.csv``
(every scored epoch's share of a simulated scoring panel per stage,
train and test; for analysis only), ``<ID>/<ID>_NNNN.png``
for every epoch (the first few epochs of each night are unscored and appear
in no CSV), with ``--edf`` also ``edf/<ID>.edf`` and ``edf/<ID>.hypnogram.csv``,
and last ``make_synthetic.json`` (the configuration), which marks the folder
complete: a folder without it was interrupted and is never overwritten.

The generator is split by concern: ``synthetic_hypnogram`` (the stages),
``synthetic_physiology`` (stage parameters, subjects, shared events),
``synthetic_noise`` (noise, curves and events as building blocks),
``synthetic_signals`` (every channel group), ``synthetic_channels`` (EDF
channels and their 16-bit quantisation), ``synthetic_recording`` (one
night assembled) and ``synthetic_files`` (one night's images and EDF
export). This script holds the command line and the run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from sleepstaging import script_io
from sleepstaging.data import psg_layout
from sleepstaging.data.psg_layout import STAGES
from sleepstaging.script_io import InputError

# --------------------------------------------------------------------------
# Configuration (the defaults are the demo's data set)
# --------------------------------------------------------------------------
from sleepstaging.synthetic.dataset import (
    GENERATOR_VERSION,
    HYPNODENSITY_CSV,
    MARKER_NAME,
    MAX_HOURS,
    made_recordings,
    output_is_up_to_date,
)
from sleepstaging.synthetic.hypnogram import UNSCORED, recording_hypnogram


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=script_io.HelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("DATA"), help="data root to create")
    parser.add_argument("--train-subjects", type=int, default=16, help="labelled recordings (one night each)")
    parser.add_argument("--test-subjects", type=int, default=4, help="test recordings")
    parser.add_argument("--seed", type=int, default=0, help="master seed; each recording derives its own")
    parser.add_argument("--hours", type=float, default=6.1, help="mean scored length of a night")
    parser.add_argument("--workers", type=int, default=2, help="recordings made in parallel")
    parser.add_argument("--edf", action="store_true", help="also write edf/<ID>.edf and edf/<ID>.hypnogram.csv")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def check_arguments(args) -> None:
    """Raise ``InputError`` for arguments no data set can be made from."""
    if args.train_subjects < 1 or args.test_subjects < 1:
        raise InputError(f"--train-subjects and --test-subjects must be at least 1, got "
                         f"{args.train_subjects} and {args.test_subjects} (command line)")
    if args.train_subjects + args.test_subjects > 9999:
        raise InputError("at most 9999 recordings in all (4-digit IDs) (command line)")
    if not 0 < args.hours <= MAX_HOURS:
        raise InputError(f"--hours must be above 0 and at most {MAX_HOURS:g}, got {args.hours:g} (command line)")
    if args.seed < 0:
        raise InputError(f"--seed must be 0 or more, got {args.seed} (command line)")
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers} (command line)")


def main() -> None:
    args = build_parser().parse_args()
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    config["generator_version"] = GENERATOR_VERSION
    print(json.dumps(config, indent=2))
    check_arguments(args)
    out = args.out
    if output_is_up_to_date(out, config):
        print(f"{out} is up to date (made with the same arguments); nothing to do")
        return
    out.mkdir(parents=True, exist_ok=True)

    n_recordings = args.train_subjects + args.test_subjects
    tasks = [(out, args.seed, index, args.hours, args.edf) for index in range(n_recordings)]
    n_images = sum(len(recording_hypnogram(args.seed, index, args.hours)) for index in range(n_recordings))
    bar = tqdm(total=n_images, unit="img", disable=args.quiet or not sys.stderr.isatty())
    started = time.perf_counter()
    results = {}
    for index, rec_id, rows in made_recordings(tasks, args.workers):
        results[index] = (rec_id, rows)
        bar.update(len(rows))
    bar.close()
    elapsed = time.perf_counter() - started

    train_rows, test_rows, answer_rows, density_rows = [], [], [], []
    for index in range(n_recordings):
        rec_id, rows = results[index]
        for idnum, stage, density in rows:
            if stage == UNSCORED:
                continue
            density_rows.append((rec_id, idnum, *(f"{share:.3f}" for share in density)))
            if index < args.train_subjects:
                train_rows.append((rec_id, idnum, STAGES[stage]))
            else:
                test_rows.append((rec_id, idnum))
                answer_rows.append((rec_id, idnum, STAGES[stage]))
    script_io.write_csv_rows(out / psg_layout.TRAIN_CSV, train_rows)
    script_io.write_csv_rows(out / psg_layout.TEST_CSV, test_rows)
    script_io.write_csv_rows(out / psg_layout.TEST_LABELS_CSV, answer_rows)
    script_io.write_csv_rows(out / HYPNODENSITY_CSV, density_rows)
    with script_io.atomic_path(out / MARKER_NAME) as tmp:  # last: marks the folder complete
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {n_images} images of {n_recordings} recordings ({len(train_rows)} train rows, "
          f"{len(test_rows)} test rows) to {out} in {elapsed:.1f} s ({n_images / elapsed:.1f} images/s)")


if __name__ == "__main__":
    script_io.run_main(main)
