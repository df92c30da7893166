"""Context post-processing of the blended prediction: the submission file.

Reads the blend's stage per test epoch (``outputs/filesblend_*.csv``, one
stage name per line, test CSV order) and writes the submission
(``outputs/files_post.csv``, same format) after one of

* ``rules`` (default): the original team's context rules, written with a
  psychiatrist to score as human scorers do. Over each recording's sequence
  s of predicted stages:

  1. s[i:i+2] == [N1, N3]                 -> s[i+1] becomes N2
  2. s[i:i+5] == [N2, N2, REM, N2, N2]    -> s[i+2] becomes N2
  3. s[i:i+5] == [N3, N3, REM, N3, N3]    -> s[i+2] becomes N3
  4. s[i:i+3] == [N1, REM, REM]           -> s[i] becomes REM
  5. s[i:i+3] == [N2, REM, REM]           -> s[i] becomes REM
  6. s[i:i+3] == [REM, N1, REM]           -> s[i+1] becomes REM
  7. s[i:i+3] == [REM, N2, REM]           -> s[i+1] becomes REM

  Patterns are matched on the sequence as it was before post-processing
  and the changes written to a copy; in the order i ascending, then rule
  number, a later write to a position wins. A recording is the test CSV's
  ``ID``, its rows taken in CSV order; patterns never span two recordings
  (the original ran them over all recordings concatenated; ``--across-recordings``
  reproduces that).
* ``hmm``: per recording, Viterbi decoding of a hidden Markov model
  (``hmm.py``): transitions and first stages counted from labelled nights
  (add-one smoothed), emissions the blended probabilities (the ``.npy``
  blend.py writes beside its CSV) divided by the stage shares the models
  were trained on (``count ** (1 - P)`` normalised for ``--stage-balance
  P``: the labels' shares for the original's sampling, equal shares for
  P = 1), transitions raised to ``--transition-weight`` and renormalised.
  Each input comes from its flag, else from a recorded model set
  (``--model-set WEIGHTS_DIR``: ``model_set.json``, whose weight was
  chosen on validation nights), else: counts from the data root's training
  CSV (``--train-csv`` names another), the stage balance from the record
  beside the blend CSV (the fold in blend.py's ``<in>.json``, then
  ``stage_balance`` in infer_blend.py's ``infer_blend_fold_<k>.json``; 0,
  the original's sampling, without one, which the output says), weight 1.
* ``none``: a copy.

Then, for every test recording, the per-recording outputs of
``hypnogram.write_recording_outputs`` go into ``--recordings-out`` (default
``recordings/`` beside the submission): ``<ID>/<ID>-hypnogram.csv`` (epoch,
onset, clock time, stage before and after post-processing, the five blended
probabilities, the epoch's signal quality from ``<root>/<ID>/<ID>.quality.json``
when ``render_edf.py`` wrote one), ``<ID>/<ID>-Hypnogram.edf`` (EDF+ annotations),
``<ID>/<ID>-hypnogram.png`` (only with ``--figures``: drawing one takes about
0.3 s, a minute for a challenge test set, and the challenge flow needs the
submission first; ``stage_edf.py`` draws them by default) and
``<ID>/<ID>-statistics.json``, plus
``sleep_statistics.csv`` (one row per recording). Epochs are placed in time
by each recording's timing sidecar (``<root>/<ID>/<ID>.timing.json``,
written by ``render_edf.py``); without one, epoch n starts (n - 1) x 30 s
after the recording start, clock time unknown. ``--no-recordings`` writes
the submission only, as does a blend CSV without its blended probabilities
(``.npy`` beside it; one line says so). The submission itself is unchanged
by all this.

Imports no torch, so it stays fast; evaluate.py imports the rules and the
decoder for its validation table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import model_set
import epoch_timing
import psg_layout
import script_io
import signal_quality
from blend import load_probabilities, read_test_csv, stage_counts
from hmm import count_stage_sequences, hmm_decode, hmm_from_counts
from output_names import blend_csv_path, model_set_path, probabilities_path, recordings_dir, submission_path
from psg_layout import STAGE_TO_INT, STAGES
from script_io import InputError, where
from rules import apply_rules

# fmt: off
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=script_io.HelpFormatter)
parser.add_argument("--data-root", default="DATA", help="folder with testset-for_user.csv (and the trainset for hmm)")
parser.add_argument("--in", dest="in_csv", type=Path, default=blend_csv_path("outputs", "sqrt", [4], [1]),
                    help="blend CSV written by blend.py")
parser.add_argument("--out", type=Path, default=submission_path("outputs"), help="the submission file")
parser.add_argument("--method", default="rules", help="rules, hmm or none")
parser.add_argument("--across-recordings", action="store_true",
                    help="rules: match patterns across recording boundaries, as the original did")
parser.add_argument("--train-csv", type=Path, default=None,
                    help="hmm: the labelled epochs (ID,IDnum,label) whose stage transitions it counts "
                         "(default: the data root's trainset-for_user.csv)")
parser.add_argument("--stage-balance", type=float, default=None,
                    help="hmm: the --stage-balance the models were trained with (default: as infer_blend.py "
                         "recorded it beside the blend CSV; 0, every row once per epoch, the original's, without "
                         "a record): the hmm divides the blended probabilities by the stage shares the models "
                         "were trained on")
parser.add_argument("--transition-weight", type=float, default=None,
                    help="hmm: decode with P(next | stage) ** WEIGHT, renormalised (default: the model set's, "
                         "else 1, the counted transitions; hmm.py)")
parser.add_argument("--model-set", default=None, metavar="WEIGHTS_DIR",
                    help="hmm: a weights folder with model_set.json (model_set.py), whose recorded counts, "
                         "stage balance and transition weight the hmm uses; each flag above overrides")
parser.add_argument("--probabilities", type=Path, default=None,
                    help="blended probabilities .npy, for hmm and the per-recording outputs (default: --in with .npy)")
parser.add_argument("--recordings-out", type=Path, default=None,
                    help="per-recording hypnograms, annotations, figures and statistics (default: recordings/ "
                         "beside --out)")
parser.add_argument("--no-recordings", action="store_true", help="write the submission only")
parser.add_argument("--figures", action="store_true",
                    help="also draw each recording's hypnogram figure (about 0.3 s each: a minute for 200 recordings)")
parser.add_argument("--review-pages", action="store_true",
                    help="also write each recording's review.html (review_page.py; needs the images in --data-root)")
parser.add_argument("--quiet", action="store_true", help="print only the configuration and what is saved")
# fmt: on

POSTPROCESS_METHODS = ("rules", "hmm", "none")
# --------------------------------------------------------------------------
# Reading and writing stage files
# --------------------------------------------------------------------------
def read_stage_lines(path: Path | str, rows: int, rows_source: str, how_to_make: str) -> np.ndarray:
    """Read a file of one stage name per line (a blend CSV or a submission).

    Returns
    -------
    np.ndarray of int64, shape (rows,)

    Raises
    ------
    InputError
        Missing file, a line that is not a stage name (all reported), or a
        line count different from ``rows``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no stage file {where(path)}; {how_to_make}")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise InputError(f"not a text file {where(path)}") from None
    bad = [(number, line) for number, line in enumerate(lines, start=1) if line not in STAGE_TO_INT]
    if bad:
        shown = ", ".join(f"{line!r} at line {number}" for number, line in bad[:5])
        raise InputError(f"expected one stage name ({', '.join(STAGES)}) per line, found {shown}"
                         f"{' and more' if len(bad) > 5 else ''} {where(path, bad[0][0])}")
    if len(lines) != rows:
        raise InputError(f"has {len(lines)} lines, {rows_source} has {rows} rows {where(path)}")
    return np.array([STAGE_TO_INT[line] for line in lines], dtype=np.int64)


def hmm_settings(args) -> tuple[dict | None, dict | None]:
    """Check the hmm's options, and fill them in for ``--method hmm``.

    Each of the hmm's three inputs comes from its flag, else the model set
    (``--model-set``), else: the counts from the data root's training CSV,
    the stage balance from infer_blend.py's record
    (:func:`models_stage_balance`), the transition weight 1.

    Returns
    -------
    counts : dict or None
        :func:`hmm.count_stage_sequences`' counts of a model set; None for the
        other methods, and when they are to be counted from ``args.train_csv``.
    sources : dict or None
        Where each input came from (``counts``, ``stage_balance``,
        ``transition_weight``), for the printed configuration.
    """
    options = (("--stage-balance", args.stage_balance), ("--train-csv", args.train_csv),
               ("--transition-weight", args.transition_weight), ("--model-set", args.model_set))
    for option, value in options:
        if value is not None and args.method != "hmm":
            raise InputError(f"{option} is read by --method hmm only, not by --method {args.method}")
    if args.method != "hmm":
        return None, None
    if args.stage_balance is not None and not psg_layout.is_stage_balance(args.stage_balance):
        raise InputError(f"--stage-balance must be a finite number, 0 or more (the models' --stage-balance), "
                         f"got {args.stage_balance}")
    if args.transition_weight is not None and not 0 <= args.transition_weight < float("inf"):
        raise InputError(f"--transition-weight must be a finite number, 0 or more, got {args.transition_weight}")

    record = model_set.read_model_set(args.model_set) if args.model_set is not None else None
    if args.model_set is not None and record is None:
        raise InputError(f"no model set record {where(model_set_path(args.model_set))}; model_set.py writes it")
    sources = {}
    if args.train_csv is None and record is not None:
        counts, sources["counts"] = record["hmm"]["counts"], record["path"]
    else:
        if args.train_csv is None:
            args.train_csv = Path(args.data_root) / psg_layout.TRAIN_CSV
        counts, sources["counts"] = None, str(args.train_csv)  # read when decoding, after the blend's checks
    if args.stage_balance is not None:
        sources["stage_balance"] = "--stage-balance"
    elif record is not None:
        args.stage_balance, sources["stage_balance"] = record["hmm"]["stage_balance"], record["path"]
    else:
        args.stage_balance, sources["stage_balance"] = models_stage_balance(args.in_csv)
    if args.transition_weight is not None:
        sources["transition_weight"] = "--transition-weight"
    elif record is not None:
        args.transition_weight, sources["transition_weight"] = record["hmm"]["transition_weight"], record["path"]
    else:
        args.transition_weight, sources["transition_weight"] = 1.0, "1: the counted transitions"
    return counts, sources


def count_labelled_nights(train_csv: Path) -> dict:
    """:func:`hmm.count_stage_sequences` of a CSV of labelled epochs (``ID,IDnum,label``)."""
    if not train_csv.is_file():
        raise InputError(f"no training CSV {where(train_csv)}; the hmm counts its transitions from "
                         f"the training labels (make_synthetic.py or render_edf.py write it; --train-csv "
                         f"names another, --model-set a recorded model set)")
    train = psg_layout.read_epoch_csv(train_csv, with_labels=True)
    return count_stage_sequences(train.labels, train.recording_ids)


def models_stage_balance(in_csv: Path) -> tuple[float, str]:
    """The ``--stage-balance`` the models behind a blend CSV were trained with, and where it was read.

    The fold from blend.py's ``<in_csv>.json``, then ``stage_balance`` (one
    value per model) from infer_blend.py's ``infer_blend_fold_<k>.json`` in
    the CSV's folder. 0 (every row once per epoch, the original's) when
    either file or the entry is missing, and the source says so.

    Raises
    ------
    InputError
        An unreadable record, or models trained with different values
        (their blend has no one set of training stage shares).
    """
    blend_json = in_csv.with_suffix(".json")
    if not blend_json.is_file():
        return 0.0, f"no record of the models' sampling: {blend_json} is missing; taken as 0, the original's"
    fold = script_io.read_json_object(blend_json).get("fold")
    if not isinstance(fold, int):
        raise InputError(f"no fold number in blend.py's configuration {where(blend_json)}")
    balances, infer_json = model_set.recorded_stage_balances(in_csv.parent, fold)
    if balances is None:
        return 0.0, (f"no record of the models' sampling: {infer_json} is missing or records no stage_balance "
                     f"(written before it did); taken as 0, the original's")
    if len(set(balances)) > 1:
        raise InputError(f"the models were trained with different --stage-balance ({', '.join(map(str, balances))}), "
                         f"so their blend has no one set of training stage shares for the hmm; choose one with "
                         f"--stage-balance {where(infer_json)}")
    return balances[0], str(infer_json)


# --------------------------------------------------------------------------
# Per-recording outputs
# --------------------------------------------------------------------------
STATISTICS_TABLE = "sleep_statistics.csv"


def place_recordings(data_root: str, test: psg_layout.EpochTable) -> dict:
    """Each test recording's rows, epoch numbers, timing and signal quality, read before anything is written.

    Returns
    -------
    dict
        ID -> ``(rows, epoch_numbers, timing, quality)``: int64 arrays (CSV
        order), its :class:`epoch_timing.EpochTiming` (sidecar, or the plain
        grid) and its :class:`signal_quality.EpochQuality` (sidecar; None
        without one).

    Raises
    ------
    InputError
        An ``IDnum`` that is not ``<ID>_NNNN.png`` (its time is unknown), a
        broken timing or quality sidecar, or a timing sidecar whose lights
        period holds none of the recording's listed epochs (no statistics to
        compute).
    """
    import hypnogram

    rows_of: dict[str, list] = {}
    for row, recording_id in enumerate(test.recording_ids):
        rows_of.setdefault(recording_id, []).append(row)
    epochs = {}
    for recording_id, rows in rows_of.items():
        numbers = []
        for row in rows:
            try:
                numbers.append(psg_layout.epoch_number_of(test.idnums[row]))
            except InputError as err:
                raise InputError(f"{err} {where(test.path, row + 1)}") from None
        timing = epoch_timing.read_epoch_timing(data_root, recording_id, numbers)
        # checked here, before anything is written, rather than when the recording's outputs are
        if not hypnogram.in_lights_period(timing.onsets(numbers), timing.epoch_seconds, timing.lights_off,
                                          timing.lights_on).any():
            sidecar = epoch_timing.timing_path(Path(data_root) / recording_id, recording_id)
            raise InputError(f"no listed epoch of recording {recording_id} lies between lights off and lights on "
                             f"({timing.lights_source}) {where(sidecar)}")
        epochs[recording_id] = (np.array(rows, dtype=np.int64), np.array(numbers, dtype=np.int64), timing,
                                signal_quality.read_quality(data_root, recording_id))
    return epochs


def write_recordings(folder: Path, placements: dict, before: np.ndarray, after: np.ndarray,
                     probabilities: np.ndarray, figures: bool = True) -> dict:
    """Every test recording's hypnogram table, EDF+ annotations, figure and statistics, and the statistics table.

    Parameters
    ----------
    folder : Path
        Where ``<ID>/`` folders and ``sleep_statistics.csv`` go.
    placements : dict
        From :func:`place_recordings`.
    before, after : np.ndarray of int, shape (rows,)
        Stages before and after post-processing, test CSV order.
    probabilities : np.ndarray, shape (rows, 5)
        Blended probabilities, test CSV order.
    figures : bool
        Draw each recording's hypnogram figure.

    Returns
    -------
    dict
        Recording ID -> its sleep statistics and signal quality summary
        (``hypnogram.write_recording_outputs``).
    """
    import hypnogram  # matplotlib and edfio: only when per-recording outputs are written

    statistics = {}
    for recording_id, (rows, epoch_numbers, timing, quality) in placements.items():
        statistics[recording_id] = hypnogram.write_recording_outputs(
            folder, recording_id, timing.onsets(epoch_numbers), before[rows], after[rows], probabilities[rows],
            timing.start, epoch_numbers, timing.epoch_seconds, figure=figures, lights_off=timing.lights_off,
            lights_on=timing.lights_on, lights_source=timing.lights_source, quality=quality)
    hypnogram.write_statistics_table(folder / STATISTICS_TABLE, statistics)
    return statistics


# --------------------------------------------------------------------------
def main(argv=None) -> None:
    args = parser.parse_args(argv)
    if args.method not in POSTPROCESS_METHODS:
        raise InputError(f"unknown post-processing method {args.method!r} (expected rules, hmm or none)")
    hmm_counts, hmm_sources = hmm_settings(args)
    probabilities_given = args.probabilities is not None
    if args.probabilities is None:
        args.probabilities = probabilities_path(args.in_csv)
    if args.recordings_out is None:
        args.recordings_out = recordings_dir(args.out)
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    if hmm_sources is not None:
        config["hmm_sources"] = hmm_sources
    print("config: " + json.dumps(config))

    test = read_test_csv(args.data_root)
    stages = read_stage_lines(args.in_csv, len(test), str(test.path),
                              "make it with blend.py, or point --in at a blend CSV")
    say = (lambda text: None) if args.quiet else print
    say(f"before: {stage_counts(stages)}")
    skip_recordings = "--no-recordings" if args.no_recordings else ""
    if not (skip_recordings or probabilities_given or args.probabilities.is_file()):
        skip_recordings = f"no blended probabilities {where(args.probabilities)} (blend.py writes them)"
    probabilities = None
    if args.method == "hmm" or not skip_recordings:
        probabilities = load_probabilities(args.probabilities, len(test), str(test.path),
                                           "blend.py writes it beside its CSV; point --probabilities at it")
    placements = None if skip_recordings else place_recordings(args.data_root, test)

    if args.method == "rules":
        new_stages, matches = apply_rules(stages, test.recording_ids, args.across_recordings)
        say("rule matches: " + ", ".join(f"{number} x{count}" for number, count in enumerate(matches, start=1)))
    elif args.method == "hmm":
        counts = hmm_counts if hmm_counts is not None else count_labelled_nights(args.train_csv)
        new_stages = hmm_decode(probabilities, test.recording_ids, *hmm_from_counts(counts, args.stage_balance),
                                transition_weight=args.transition_weight)
    else:
        new_stages = stages
    say(f"after:  {stage_counts(new_stages)} ({int((new_stages != stages).sum())} rows changed)")

    script_io.write_lines(args.out, (STAGES[s] for s in new_stages))
    with script_io.atomic_path(args.out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(config, indent=2))
    print(f"{args.out} is saved ({len(new_stages)} rows)")
    if skip_recordings:
        say(f"per-recording outputs skipped: {skip_recordings}")
    else:
        statistics = write_recordings(args.recordings_out, placements, stages, new_stages, probabilities,
                                      figures=args.figures)
        print(f"{args.recordings_out} holds the hypnograms, annotations{', figures' if args.figures else ''} "
              f"and statistics of {len(statistics)} recording(s), with {STATISTICS_TABLE}")
        if args.review_pages:
            import review_page

            import calibration

            temperature = calibration.recorded_temperature(model_set.read_model_set(args.model_set)
                                                           if args.model_set else None)
            pages = review_page.write_layout_pages(Path(args.data_root), args.recordings_out,
                                                   review_page.blend_model_dumps(args.in_csv), temperature)
            print(f"{len(pages)} review page(s) are saved ({review_page.PAGE_NAME} in each recording's folder)")


if __name__ == "__main__":
    script_io.run_main(main)
