"""Post-processing a blend: reading stage files, the hmm's inputs (flags, model set, records), the original's
rules or the hmm over the test rows, and each recording's outputs (postprocess.py, stage_edf.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import json
from pathlib import Path

import numpy as np

from sleepstaging.scoring import model_set
from sleepstaging.data import epoch_timing
from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.edf import signal_quality
from sleepstaging.output_names import model_set_path, posterior_path
from sleepstaging.scoring.blend import load_probabilities, read_test_csv, stage_counts
from sleepstaging.scoring.hmm import count_stage_sequences, hmm_decode, hmm_from_counts, hmm_posterior
from sleepstaging.scoring.rules import apply_rules
from sleepstaging.data.psg_layout import STAGE_TO_INT, STAGES
from sleepstaging.script_io import InputError, where


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
    from sleepstaging.scoring import night_outputs
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
        if not night_outputs.in_lights_period(timing.onsets(numbers), timing.epoch_seconds, timing.lights_off,
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
        Blended probabilities as the tables show them (calibrated), test CSV order.
    figures : bool
        Draw each recording's hypnogram figure.

    Returns
    -------
    dict
        Recording ID -> its sleep statistics and signal quality summary
        (``night_outputs.write_recording_outputs``).
    """
    from sleepstaging.scoring import night_outputs

    statistics = {}
    for recording_id, (rows, epoch_numbers, timing, quality) in placements.items():
        statistics[recording_id] = night_outputs.write_recording_outputs(
            folder, recording_id, timing.onsets(epoch_numbers), before[rows], after[rows], probabilities[rows],
            timing.start, epoch_numbers, timing.epoch_seconds, figure=figures, lights_off=timing.lights_off,
            lights_on=timing.lights_on, lights_source=timing.lights_source, quality=quality)
    night_outputs.write_statistics_table(folder / STATISTICS_TABLE, statistics)
    return statistics


@dataclass(frozen=True)
class HmmInputs:
    """What the hmm decodes with: counted transitions (a model set's, or None: count ``train_csv``), the models'
    stage balance and the transition weight; and the temperatures its posterior is calibrated with, one per
    stage assigned (Wake..REM; all 1: none)."""
    counts: dict | None
    train_csv: Path | None
    stage_balance: float
    transition_weight: float
    posterior_temperatures: tuple[float, ...] = (1.0,) * psg_layout.NUM_CLASSES

    def model(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(transition, initial, priors)``: :func:`hmm.hmm_from_counts` of the counts (read if need be)."""
        counts = self.counts if self.counts is not None else count_labelled_nights(self.train_csv)
        return hmm_from_counts(counts, self.stage_balance)


def postprocess_test(data_root: Path | str, in_csv: Path, out: Path, method: str, hmm: HmmInputs | None,
                     probabilities_file: Path, recordings_out: Path | None, config: dict, *,
                     across_recordings: bool = False, figures: bool = False, probabilities_given: bool = False,
                     quiet: bool = False, temperature: float = 1.0) -> np.ndarray:
    """Post-process a blend CSV into ``out`` (one stage a line) and, unless ``recordings_out`` is None, each
    recording's outputs; return the stages written (ints, test CSV order).

    ``config`` is saved beside ``out`` as JSON. With the hmm, its posterior
    per epoch (each row calibrated by ``hmm.posterior_temperatures`` of the
    stage written for it) is saved beside
    ``out`` (``output_names.posterior_path``; removed there for the other
    methods, so none is left from an earlier run). The per-recording tables
    and figures show the blended probabilities calibrated by ``temperature``
    (``calibration.apply_temperature``; the stages come from the blend as
    it is). The per-recording outputs are skipped (and said) when the
    blended probabilities are missing and were not named
    (``probabilities_given``).
    """
    from sleepstaging.scoring import calibration

    test = read_test_csv(data_root)
    stages = read_stage_lines(in_csv, len(test), str(test.path), "make it with blend.py, or point --in at a blend CSV")
    say = (lambda text: None) if quiet else print
    say(f"before: {stage_counts(stages)}")
    skip_recordings = "--no-recordings" if recordings_out is None else ""
    if not (skip_recordings or probabilities_given or probabilities_file.is_file()):
        skip_recordings = f"no blended probabilities {where(probabilities_file)} (blend.py writes them)"
    probabilities = None
    if method == "hmm" or not skip_recordings:
        probabilities = load_probabilities(probabilities_file, len(test), str(test.path),
                                           "blend.py writes it beside its CSV; point --probabilities at it")
    placements = None if skip_recordings else place_recordings(data_root, test)
    model = hmm.model() if method == "hmm" else None  # (transition, initial, priors)
    new_stages = new_stages_of(stages, test.recording_ids, method, hmm, model, probabilities, across_recordings, say)
    say(f"after:  {stage_counts(new_stages)} ({int((new_stages != stages).sum())} rows changed)")

    script_io.write_lines(out, (STAGES[s] for s in new_stages))
    with script_io.atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(config, indent=2))
    write_posterior(out, hmm, model, probabilities, test.recording_ids, new_stages)
    print(f"{out} is saved ({len(new_stages)} rows)")
    if skip_recordings:
        say(f"per-recording outputs skipped: {skip_recordings}")
        return new_stages
    statistics = write_recordings(recordings_out, placements, stages, new_stages,
                                  calibration.apply_temperature(probabilities, temperature), figures=figures)
    print(f"{recordings_out} holds the hypnograms, annotations{', figures' if figures else ''} "
          f"and statistics of {len(statistics)} recording(s), with {STATISTICS_TABLE}")
    return new_stages


def write_posterior(out: Path, hmm: HmmInputs | None, model: tuple | None, probabilities: np.ndarray | None,
                    recording_ids, assigned: np.ndarray) -> None:
    """The hmm's calibrated posterior per epoch (rows, 5), float32, beside ``out``; without the hmm (``model``
    None), none there. Row i is scaled by the temperature of ``assigned[i]``, the stage the hmm wrote for it
    (``calibration.apply_stage_temperatures``)."""
    from sleepstaging.scoring import calibration

    path = posterior_path(out)
    if model is None:
        path.unlink(missing_ok=True)
        return
    posterior = hmm_posterior(probabilities, recording_ids, *model, transition_weight=hmm.transition_weight)
    with script_io.atomic_path(path) as tmp:
        np.save(tmp, calibration.apply_stage_temperatures(posterior, assigned, hmm.posterior_temperatures)
                .astype(np.float32))


def new_stages_of(stages: np.ndarray, recording_ids, method: str, hmm: HmmInputs | None, model: tuple | None,
                  probabilities: np.ndarray | None, across_recordings: bool, say) -> np.ndarray:
    """The post-processed stages: the original's rules, the hmm's decoding of the probabilities, or unchanged."""
    if method == "rules":
        new_stages, matches = apply_rules(stages, recording_ids, across_recordings)
        say("rule matches: " + ", ".join(f"{number} x{count}" for number, count in enumerate(matches, start=1)))
        return new_stages
    if method == "hmm":
        return hmm_decode(probabilities, recording_ids, *model, transition_weight=hmm.transition_weight)
    return stages


def hmm_settings(method: str, data_root: Path | str, in_csv: Path, train_csv: Path | None = None,
                 stage_balance: float | None = None, transition_weight: float | None = None,
                 model_set_dir: Path | str | None = None) -> tuple[HmmInputs | None, dict | None]:
    """Check the hmm's options, and fill them in for ``--method hmm``.

    Each of the hmm's three inputs comes from its flag, else the model set
    (``model_set_dir``), else: the counts from the data root's training CSV,
    the stage balance from infer_blend.py's record
    (:func:`models_stage_balance`), the transition weight 1.

    Parameters
    ----------
    method : str
        ``rules``, ``hmm`` or ``none``; the others are refused for any method but ``hmm``.
    data_root : path-like
        The data root, whose training CSV the hmm counts without a model set or ``train_csv``.
    in_csv : Path
        The blend CSV, beside which infer_blend.py recorded the models' stage balance.
    train_csv, stage_balance, transition_weight, model_set_dir
        The flags ``--train-csv``, ``--stage-balance``, ``--transition-weight``
        and ``--model-set`` (None: not given).

    Returns
    -------
    hmm : HmmInputs or None
        What the hmm decodes with; None for the other methods.
    sources : dict or None
        Where each input came from (``counts``, ``stage_balance``,
        ``transition_weight``), for the printed configuration.
    """
    _check_hmm_flags(method, train_csv, stage_balance, transition_weight, model_set_dir)
    if method != "hmm":
        return None, None

    record = model_set.read_model_set(model_set_dir) if model_set_dir is not None else None
    if model_set_dir is not None and record is None:
        raise InputError(f"no model set record {where(model_set_path(model_set_dir))}; model_set.py writes it")
    sources = {}
    if train_csv is None and record is not None:
        counts, sources["counts"] = record["hmm"]["counts"], record["path"]
    else:
        if train_csv is None:
            train_csv = Path(data_root) / psg_layout.TRAIN_CSV
        counts, sources["counts"] = None, str(train_csv)  # read when decoding, after the blend's checks
    if stage_balance is not None:
        sources["stage_balance"] = "--stage-balance"
    elif record is not None:
        stage_balance, sources["stage_balance"] = record["hmm"]["stage_balance"], record["path"]
    else:
        stage_balance, sources["stage_balance"] = models_stage_balance(in_csv)
    if transition_weight is not None:
        sources["transition_weight"] = "--transition-weight"
    elif record is not None:
        transition_weight, sources["transition_weight"] = record["hmm"]["transition_weight"], record["path"]
    else:
        transition_weight, sources["transition_weight"] = 1.0, "1: the counted transitions"
    temperatures, sources["posterior_temperature"] = posterior_calibration(record, sources)
    return HmmInputs(counts, train_csv, stage_balance, transition_weight, tuple(temperatures)), sources


def _check_hmm_flags(method: str, train_csv, stage_balance: float | None, transition_weight: float | None,
                     model_set_dir) -> None:
    """Refuse an hmm option with another method, and a ``--stage-balance`` or ``--transition-weight`` no decoding
    can use (None: not given)."""
    options = (("--stage-balance", stage_balance), ("--train-csv", train_csv),
               ("--transition-weight", transition_weight), ("--model-set", model_set_dir))
    for option, value in options:
        if value is not None and method != "hmm":
            raise InputError(f"{option} is read by --method hmm only, not by --method {method}")
    if stage_balance is not None and not psg_layout.is_stage_balance(stage_balance):
        raise InputError(f"--stage-balance must be a finite number, 0 or more (the models' --stage-balance), "
                         f"got {stage_balance}")
    if transition_weight is not None and not 0 <= transition_weight < float("inf"):
        raise InputError(f"--transition-weight must be a finite number, 0 or more, got {transition_weight}")


def posterior_calibration(record: dict | None, sources: dict) -> tuple[list[float], str]:
    """The hmm posterior's temperatures (one per stage assigned) and, in one line, where they came from: the
    model set's (``calibration.recorded_hmm_temperatures``) when the hmm is wholly the model set's, else all 1
    (fitted for another hmm, or none)."""
    from sleepstaging.scoring import calibration

    ones = [1.0] * psg_layout.NUM_CLASSES
    if record is None:
        return ones, "1: no model set"
    if any(sources[key] != record["path"] for key in ("counts", "stage_balance", "transition_weight")):
        return ones, "1: the hmm is not wholly the model set's, whose temperatures were fitted for its own"
    temperatures, what = calibration.recorded_hmm_temperatures(record, psg_layout.NUM_CLASSES)
    if temperatures == ones:
        return ones, what
    return temperatures, f"{record['path']}, {what}: " + ", ".join(f"{stage} {t:.3f}" for stage, t in
                                                                  zip(STAGES, temperatures))
