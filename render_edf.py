"""Render EDF polysomnography into the challenge layout.

Real public recordings (Sleep-EDF Expanded, the NSRR cohorts such as SHHS, a
clinic's own exports) are EDF files with separate hypnograms. This script
maps each file's channels onto the 21 rows of ``psg_layout.py`` (a montage),
cuts the recording into 30-s epochs aligned to the hypnogram, draws every
epoch with the shared renderer (``psg_layout.render_epoch``, the same code
as ``make_synthetic.py``) and appends the labelled epochs to the split's CSV:

    python render_edf.py --edf sleep-cassette/ --out DATA --split train --montage sleep-edf

writes ``DATA/<ID>/<ID>_NNNN.png`` (NNNN = epoch number counted from the
recording start, so a file maps back to its time even after trimming),
``DATA/<ID>/render_edf.json`` (the resolved configuration and what was
done to that recording), ``DATA/<ID>/<ID>.timing.json`` (the timing sidecar:
the recording's start date and clock time from the EDF header, the epoch
length, the start of epoch 1, the epoch number of every image, lights off
and lights on; see ``epoch_timing.EpochTiming``), ``DATA/<ID>/<ID>.quality.json``
(the signal quality sidecar: flat, clipped and missing rows per epoch and
the recording's warnings, which are also printed as ``warning: <ID>: ...``;
see ``signal_quality.py``) and appends ``ID,IDnum,label`` rows to
``DATA/trainset-for_user.csv`` (``--split test``: ``ID,IDnum`` to
``testset-for_user.csv`` and the answers to ``testset-labels.csv``).

Recordings no one has scored yet (``--split test --unscored``) need no
hypnogram: every whole 30-s epoch from the first sample on is drawn and
listed in ``testset-for_user.csv``, with no answers. ``--trim-wake`` does
not apply to them: without stages there is no sleep period to trim around,
so the whole recording is kept (trim the scored hypnogram afterwards).

Lights off and lights on (the time in bed of the sleep statistics) come
from ``--lights-off``/``--lights-on`` (a clock time ``HH:MM[:SS]`` or
seconds from the recording start), else from the recording's own EDF+
annotations (``lights.LIGHTS_LABELS``); see ``lights.resolve_lights``.

Everything is checked (montage, channels, units, hypnograms, their length
against the recording, IDs already in the data set) before the first image
is drawn; images are drawn into a hidden folder per recording and moved into
place only when every recording of the run has succeeded, then the CSVs are
rewritten atomically. A failed run leaves ``--out`` as it was.

This script is the run (command line, finding recordings, planning, drawing,
the split's CSVs); it reads with ``montages.py``, ``edf_signals.py``,
``scored_hypnograms.py`` and ``lights.py``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

from sleepstaging import script_io
from sleepstaging.edf.edf_signals import detect_montage, open_edf
from sleepstaging.edf.lights import lights_value
from sleepstaging.edf.montages import AUTO_MONTAGE, load_montage
from sleepstaging.edf.render import check_new_ids, find_recordings, plan_recording, render_all, split_csv_contents
from sleepstaging.script_io import InputError, where


def parse_trim_wake(text: str) -> float | None:
    """``--trim-wake``: minutes of wake kept around the sleep period, or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        minutes = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes or 'none', got {text!r}") from None
    if not math.isfinite(minutes) or minutes < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative minutes or 'none', got {text!r}")
    return minutes


def lights_option(text: str) -> str:
    """``--lights-off``/``--lights-on``: the text as given, once it reads as a clock time or seconds."""
    try:
        lights_value(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Render EDF polysomnography and hypnograms into the challenge's image and CSV layout.",
        formatter_class=script_io.HelpFormatter,
    )
    parser.add_argument("--edf", type=Path, required=True,
                        help="one EDF file, or a folder searched recursively for recordings and their hypnograms")
    parser.add_argument("--hypnogram", type=Path, default=None,
                        help="the hypnogram of a single --edf file (EDF+ annotations, NSRR XML or plain CSV), "
                             "or a folder to search for hypnograms; default: found by the archive's naming "
                             "beside the recordings")
    parser.add_argument("--out", type=Path, required=True, help="data root to add the recordings to")
    parser.add_argument("--split", choices=("train", "test"), required=True,
                        help="train: rows go to trainset-for_user.csv; test: to testset-for_user.csv, "
                             "answers to testset-labels.csv")
    parser.add_argument("--montage", default=AUTO_MONTAGE,
                        help="auto (per recording, the first built-in montage whose channels it has), "
                             "sleep-edf, shhs, synthetic, or a JSON montage file")
    parser.add_argument("--trim-wake", type=parse_trim_wake, default=30.0,
                        help="minutes of wake kept before the first and after the last sleep epoch; "
                             "'none' keeps the whole recording (unscored recordings are always kept whole)")
    parser.add_argument("--unscored", action="store_true",
                        help="the recordings have no hypnogram: render every whole epoch from the recording "
                             "start into testset-for_user.csv (needs --split test; no answers are written)")
    for bound in ("off", "on"):
        parser.add_argument(f"--lights-{bound}", type=lights_option, default=None, metavar="TIME",
                            help=f"lights {bound}: clock time HH:MM[:SS] (the first such moment at or after the "
                                 f"recording start) or seconds from the recording start; default: the recording's "
                                 f"EDF+ 'Lights {bound}' annotation, else the recording's "
                                 f"{'start' if bound == 'off' else 'end'}")
    parser.add_argument("--workers", type=int, default=2, help="recordings rendered in parallel")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be 1 or more, got {args.workers}")
    if args.unscored and args.split != "test":
        parser.error("--unscored recordings have no labels to train on: use --split test")
    if args.unscored and args.hypnogram is not None:
        parser.error("--unscored reads no hypnogram: leave out --hypnogram")
    return args


def lights_summary(record: dict) -> str:
    """``"; lights off 1800 s, on 27000 s (--lights-off/--lights-on)"`` from a recording's record; empty without lights."""
    bounds = ", ".join(f"{bound} {record[f'lights_{bound}_s']:g} s" for bound in ("off", "on")
                       if record[f"lights_{bound}_s"] is not None)
    return f"; lights {bounds} ({record['lights_source']})" if bounds else ""


def main(argv=None) -> None:
    args = parse_args(argv)
    montage = None if args.montage == AUTO_MONTAGE else load_montage(args.montage)
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    config["trim_wake"] = "none" if args.trim_wake is None else args.trim_wake

    out = args.out
    if out.exists() and not out.is_dir():
        raise InputError(f"--out is a file, not a folder {where(out)}")
    recordings = find_recordings(args.edf, args.hypnogram, args.unscored)
    check_new_ids(out, recordings)
    opened = {source.recording_id: open_edf(source.edf) for source in recordings}  # each EDF once, for every step
    montages = {recording_id: montage or detect_montage(recording) for recording_id, recording in opened.items()}
    config["montage_rows"] = {chosen.name: {row: vars(source) for row, source in chosen.rows.items()}
                              for chosen in montages.values()}
    print(json.dumps(config, indent=2))
    jobs = [plan_recording(source, opened[source.recording_id], montages[source.recording_id], args.trim_wake, out,
                           config, lights_off=args.lights_off, lights_on=args.lights_on)
            for source in recordings]
    for job in jobs:
        record = job.record
        print(f"{record['recording_id']} ({record['montage']} montage): epochs {record['first_epoch']}-"
              f"{record['last_epoch']} of "
              f"{record['epochs_in_recording']}, {record['epochs_labelled']} labelled, "
              f"rows {', '.join(job.rows)}{lights_summary(record)}")

    created_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    moved = []
    try:
        warnings = render_all(jobs, args.workers, show_progress=not args.quiet and sys.stderr.isatty())
        csv_contents = split_csv_contents(out, args.split, jobs, args.unscored)
        for job in jobs:
            os.replace(job.staging, out / job.source.recording_id)
            moved.append(out / job.source.recording_id)
    except BaseException:
        for folder in [job.staging for job in jobs] + moved:
            shutil.rmtree(folder, ignore_errors=True)
        if created_out:
            shutil.rmtree(out, ignore_errors=True)
        raise
    for path, rows in csv_contents.items():
        script_io.write_csv_rows(path, rows)
    for job, found in zip(jobs, warnings):
        if found:
            print(f"warning: {job.source.recording_id}: {'; '.join(found)}")
    rendered = sum(len(job.epoch_numbers) for job in jobs)
    labelled = sum(job.record["epochs_labelled"] for job in jobs)
    print(f"rendered {len(jobs)} recording(s), {rendered} images ({labelled} labelled); rows added to "
          f"{', '.join(p.name for p in csv_contents)} in {out}")


if __name__ == "__main__":
    script_io.run_main(main)
