"""A trained model set: its record (models, kept epochs, blend, post-processing, hmm, calibration) read and
checked, the models' training configurations, and the validation blend the record is chosen on (model_set.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sleepstaging.scoring import blend
from sleepstaging.scoring import calibration
from sleepstaging.scoring import hmm
from sleepstaging import recipe
from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.output_names import (checkpoint_path, dump_path, infer_config_path, model_set_path, run_config_path,
                                       tune_json_path, valid_csv_path)
from sleepstaging.scoring.rules import apply_rules
from sleepstaging.data.psg_layout import NUM_CLASSES
from sleepstaging.script_io import InputError, where


# What the scripts use without a model set or a flag: the original's models and kept epochs.
ORIGINAL_MODELS = recipe.ORIGINAL_MODELS
MODEL_KEYS = tuple(ORIGINAL_MODELS)
BLEND_KEYS = ("method", "ens_weight", "power", "dump_scale")
POSTPROCESS_CHOICES = ("none", "rules", "hmm")  # what new nights may get, the simplest first


# Validation macro-F1 within this of the best counts as as good: on the demo's 3 validation nights the
# difference between two post-processings of one blend has a standard error of about 0.01 (the record's
# difference_se_vs_blend, docs/demo.md), so a smaller lead says nothing about new nights.
MACRO_F1_TOLERANCE = 0.01
BOOTSTRAP_BLOCK_EPOCHS = 20  # errors come in runs: resample blocks of 10 minutes, not single epochs
BOOTSTRAP_DRAWS = 300


def paired_difference_se(labels: np.ndarray, first: np.ndarray, second: np.ndarray, seed: int = 0) -> float:
    """Standard error of macro-F1(first) - macro-F1(second) on the same rows: a paired block bootstrap.

    Parameters
    ----------
    labels, first, second : np.ndarray of int, shape (rows,)
        True stages and two predictions of them, rows in time order.
    seed : int
        Seed of the resampling (the figure is deterministic).

    Returns
    -------
    float
        The standard deviation of the difference over :data:`BOOTSTRAP_DRAWS`
        resamplings of blocks of :data:`BOOTSTRAP_BLOCK_EPOCHS` consecutive rows.
    """
    rng = np.random.default_rng(seed)
    starts = np.arange(0, len(labels), BOOTSTRAP_BLOCK_EPOCHS)
    differences = []
    for _ in range(BOOTSTRAP_DRAWS):
        rows = np.concatenate([np.arange(start, min(start + BOOTSTRAP_BLOCK_EPOCHS, len(labels)))
                               for start in rng.choice(starts, len(starts))])
        differences.append(blend.macro_f1(labels[rows], first[rows]) - blend.macro_f1(labels[rows], second[rows]))
    return float(np.std(differences))


def choose_postprocess(scores: dict) -> str:
    """The post-processing new nights get, from :func:`validation_scores`.

    Of ``none``, ``rules`` and ``hmm``, those whose validation macro-F1 lies
    within :data:`MACRO_F1_TOLERANCE` of the best; of these, the one whose
    stage shifts a night come closest to the true nights' (a hypnogram that
    changes stage twice as often as the truth says more awakenings and
    more fragmentation than the night had); a tie goes to the simpler (the
    first in :data:`POSTPROCESS_CHOICES`).
    """
    macro_f1 = {name: scores[f"{'blend' if name == 'none' else name}_macro_f1"] for name in POSTPROCESS_CHOICES}
    near_best = [name for name in POSTPROCESS_CHOICES if macro_f1[name] >= max(macro_f1.values()) - MACRO_F1_TOLERANCE]
    shifts = {name: scores["statistics_mean"]["blend" if name == "none" else name]["stage_shifts"]
              for name in (*POSTPROCESS_CHOICES, "true")}
    return min(near_best, key=lambda name: (abs(shifts[name] - shifts["true"]), POSTPROCESS_CHOICES.index(name)))


# --------------------------------------------------------------------------
# The models' training configurations and checkpoints
# --------------------------------------------------------------------------
# Options added after runs were first saved, with what those runs did: a configuration without
# them reads as having used these (read_run_config), so such runs resume and infer as trained.
ADDED_SETTINGS = dict(resize="linear", warmup_epochs=0.0, stage_balance=0.0, original_defects=False,
                      input_norm="imagenet", no_holes=False)


def read_run_config(weights_dir: Path | str, arch: str, fold: int) -> dict:
    """Read the configuration a training run saved beside its checkpoints.

    Returns
    -------
    dict
        At least ``model_arch`` (str), ``img_size`` (``(height, width)`` in
        pixels, also from configurations written before inputs could be
        non-square, which saved one int) and ``num_classes`` (int), plus
        every resolved training option; the :data:`ADDED_SETTINGS` a
        configuration written before them lacks, with their values of then:
        the one place older configurations are brought up to date.

    Raises
    ------
    InputError
        Missing file (the message says to train first or fix
        ``--weights-dir``), invalid JSON, missing keys, or an ``img_size``
        that is not one or two sizes.
    """
    path = run_config_path(weights_dir, arch, fold)
    if not path.is_file():
        raise InputError(f"no training configuration for {arch} fold {fold}: train it first "
                         f"(main_vit_rgb.py / main_eff.py) or point --weights-dir to its folder {where(path)}")
    config = script_io.read_json_object(path)
    missing = [key for key in ("model_arch", "img_size", "num_classes") if key not in config]
    if missing:
        raise InputError(f"configuration lacks {', '.join(missing)} {where(path)}")
    try:  # one int (square) in configurations written before inputs could be non-square
        config["img_size"] = psg_layout.input_shape(config["img_size"])
    except InputError:
        raise InputError(f"configuration's img_size is not one or two sizes in pixels: {config['img_size']!r} "
                         f"{where(path)}") from None
    return {**ADDED_SETTINGS, **config}


def read_model_config(weights_dir: str, arch: str, fold: int, epochs, trainer: str) -> dict:
    """The training configuration of one model, checked against what inference needs.

    ``trainer`` is the script that trains this model, named in the message
    when a checkpoint is missing.

    Raises
    ------
    InputError
        No configuration or checkpoint (the message says how to train),
        a configuration of another architecture or another class count.
    """
    config = read_run_config(weights_dir, arch, fold)
    path = run_config_path(weights_dir, arch, fold)
    # the original's 1000-class EfficientNet (--original-defects) is folded into the stages at inference
    folded = config["original_defects"] and config["num_classes"] % NUM_CLASSES == 0
    if config["model_arch"] != arch or not (config["num_classes"] == NUM_CLASSES or folded):
        raise InputError(f"configuration is of {config['model_arch']} with {config['num_classes']} classes, "
                         f"expected {arch} with {NUM_CLASSES} {where(path)}")
    for epoch in epochs:
        checkpoint = checkpoint_path(weights_dir, arch, fold, epoch)
        if not checkpoint.is_file():
            raise InputError(f"no checkpoint of epoch {epoch} {where(checkpoint)}; train {arch} with {trainer} "
                             f"for more than {epoch} epochs (epochs count from 0), or pick saved epochs")
    return config


def read_model_configs(weights_dir: Path | str, fold: int, models: dict) -> dict:
    """Both models' training configurations, checked (see :func:`read_model_config`).

    ``models``: ``{"vit": (arch, epochs), "eff": (arch, epochs)}``.
    """
    trainers = {"vit": "main_vit_rgb.py", "eff": "main_eff.py"}
    return {key: read_model_config(weights_dir, arch, fold, epochs, trainers[key])
            for key, (arch, epochs) in models.items()}


def model_files_sha256(weights_dir: Path | str, fold: int, models: dict) -> str:
    """One SHA-256 over the files a scoring run uses: each model's configuration and kept checkpoints, the record.

    ``models``: ``{"vit": (arch, epochs), "eff": (arch, epochs)}``. The files'
    names (not their folder) and contents enter it, so a copy of the weights
    folder elsewhere has the same digest and a model retrained in place has
    another. Read in blocks of 1 MiB: a checkpoint is never held whole.
    """
    import hashlib

    paths = [model_set_path(weights_dir)] if model_set_path(weights_dir).is_file() else []
    for arch, epochs in models.values():
        paths += [run_config_path(weights_dir, arch, fold),
                  *(checkpoint_path(weights_dir, arch, fold, epoch) for epoch in epochs)]
    lines = []
    for path in paths:  # one line per file, "<name> <its digest>": no two sets of files give the same text
        file_digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                file_digest.update(block)
        lines.append(f"{Path(path).name} {file_digest.hexdigest()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# --------------------------------------------------------------------------
# Reading the record
# --------------------------------------------------------------------------
def _epochs_ok(value) -> bool:
    return (isinstance(value, list) and value and all(isinstance(e, int) and e >= 0 for e in value)
            and len(set(value)) == len(value))


def read_model_set(weights_dir: Path | str) -> dict | None:
    """The model set recorded in ``weights_dir``, checked; None when there is none.

    Returns
    -------
    dict or None
        The record, with ``models``: ``{"fold", "vit_arch", "eff_arch",
        "vit_epochs", "eff_epochs"}`` as the scripts' options name them.

    Raises
    ------
    InputError
        A record that is not JSON or lacks or mistypes an entry (named, with the file).
    """
    path = model_set_path(weights_dir)
    if not path.is_file():
        return None
    record = script_io.read_json_object(path, "model set record")
    try:
        models = {"fold": record["fold"], "vit_arch": record["vit"]["arch"], "eff_arch": record["eff"]["arch"],
                  "vit_epochs": record["vit"]["epochs"], "eff_epochs": record["eff"]["epochs"]}
        settings = {key: record["blend"][key] for key in BLEND_KEYS}
        counts, weight = record["hmm"]["counts"], record["hmm"]["transition_weight"]
        stage_balance = record["hmm"]["stage_balance"]
    except (KeyError, TypeError) as err:
        raise InputError(f"model set record lacks {err} {where(path)}") from None
    if not (isinstance(models["fold"], int) and all(isinstance(models[k], str) for k in ("vit_arch", "eff_arch"))
            and _epochs_ok(models["vit_epochs"]) and _epochs_ok(models["eff_epochs"])):
        raise InputError(f"model set record: fold, architectures or epochs are not usable {where(path)}")
    try:
        blend.check_blend_settings(settings["method"], settings["ens_weight"], settings["power"])
        blend.row_scales(settings["dump_scale"], record["blend"].get("tta", blend.ORIGINAL_TTA))
        check_hmm_record(counts, stage_balance, weight)
        check_calibration_record(record.get("calibration"))
    except InputError as err:
        raise InputError(f"model set record: {err} {where(path)}") from None
    return dict(record, models=models, path=str(path))


def check_hmm_record(counts, stage_balance, transition_weight) -> None:
    """Refuse hmm counts, a stage balance or a transition weight that no decoding can use."""
    classes = psg_layout.NUM_CLASSES
    try:
        shapes = [np.asarray(counts[key], dtype=np.float64).shape for key in ("stages", "first_stages", "transitions")]
        values = np.concatenate([np.ravel(np.asarray(counts[key], dtype=np.float64))
                                 for key in ("stages", "first_stages", "transitions")])
    except (KeyError, TypeError, ValueError):
        raise InputError("hmm counts need stages, first_stages (5 numbers each) and transitions (5 x 5)") from None
    if shapes != [(classes,), (classes,), (classes, classes)] or not (np.isfinite(values).all() and values.min() >= 0):
        raise InputError("hmm counts need stages, first_stages (5 counts each) and transitions (5 x 5 counts), "
                         "finite and 0 or more")
    if not psg_layout.is_stage_balance(stage_balance):
        raise InputError(f"stage_balance must be a finite number, 0 or more, got {stage_balance!r}")
    if not (isinstance(transition_weight, (int, float)) and 0 <= transition_weight < float("inf")):
        raise InputError(f"transition_weight must be a finite number, 0 or more, got {transition_weight!r}")


def check_calibration_record(entry) -> None:
    """Refuse stage temperatures of the hmm's posterior that are not one positive number per stage (a record
    without them is one written before them, and reads as it did then: calibration.recorded_hmm_temperatures)."""
    if not isinstance(entry, dict) or "hmm_stage_temperatures" not in entry:
        return
    if not calibration.is_temperature_list(entry["hmm_stage_temperatures"], NUM_CLASSES):
        raise InputError(f"calibration's hmm_stage_temperatures must be {NUM_CLASSES} finite positive numbers "
                         f"(Wake, N1, N2, N3, REM), got {entry['hmm_stage_temperatures']!r}")


def resolve_models(args, record: dict | None) -> str:
    """Fill the model options a command line left out, from the record, else the original's.

    ``args`` holds ``fold``, ``vit_arch``, ``eff_arch``, ``vit_epochs`` and
    ``eff_epochs`` only where they were given (their argparse default is
    ``argparse.SUPPRESS``); afterwards it holds all five. Returns where the
    missing ones came from, for the printed configuration.
    """
    missing = [key for key in MODEL_KEYS if not hasattr(args, key)]
    source = ORIGINAL_MODELS if record is None else record["models"]
    for key in missing:
        setattr(args, key, source[key])
    if not missing:
        return "the command line"
    return "the original's" if record is None else record["path"]


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--fold``, ``--vit-arch``, ``--eff-arch``, ``--vit-epochs``, ``--eff-epochs``; unset unless given."""
    unset = argparse.SUPPRESS
    original = ORIGINAL_MODELS
    parser.add_argument("--fold", type=int, default=unset,
                        help=f"the fold the models were trained against (default: the model set's, else {original['fold']})")
    parser.add_argument("--vit-arch", default=unset,
                        help=f"model 1 (default: the model set's, else {original['vit_arch']}, the original's)")
    parser.add_argument("--eff-arch", default=unset,
                        help=f"model 2 (default: the model set's, else {original['eff_arch']}, the original's)")
    parser.add_argument("--vit-epochs", type=int, nargs="+", default=unset,
                        help=f"model 1 checkpoints averaged (default: the model set's, else {original['vit_epochs'][0]})")
    parser.add_argument("--eff-epochs", type=int, nargs="+", default=unset,
                        help=f"model 2 checkpoints averaged (default: the model set's, else {original['eff_epochs'][0]})")


# --------------------------------------------------------------------------
# Recording a model set
# --------------------------------------------------------------------------
def hmm_counts_outside(data_root: Path | str, valid: psg_layout.EpochTable) -> dict:
    """:func:`hmm.count_stage_sequences` of the training CSV's rows that are not validation rows.

    Raises
    ------
    InputError
        No training CSV in ``data_root``.
    """
    train_csv = Path(data_root) / psg_layout.TRAIN_CSV
    if not train_csv.is_file():
        raise InputError(f"no training CSV {where(train_csv)}; the hmm counts its stage transitions from the "
                         f"labelled nights the models were trained on: point --data-root at them")
    train = psg_layout.read_epoch_csv(train_csv, with_labels=True)
    held_out = set(valid.idnums)
    keep = np.array([idnum not in held_out for idnum in train.idnums], dtype=bool)
    return hmm.count_stage_sequences(train.labels[keep], [r for r, k in zip(train.recording_ids, keep) if k])


def recorded_stage_balances(outputs: Path | str, fold: int) -> tuple[list[float] | None, Path]:
    """The ``--stage-balance`` of the two models behind the dumps in ``outputs``: the one place it is read back.

    ``infer_blend.py`` copies it from the two training configurations into
    its record (``infer_blend_fold_<k>.json``, key ``stage_balance``: ViT,
    EfficientNet); ``postprocess.py``, ``evaluate.py`` and this script read
    it from there.

    Returns
    -------
    balances : list of two float, or None
        None when there is no record, or it was written before it held
        the entry.
    path : Path
        The record.

    Raises
    ------
    InputError
        An unreadable record, or an entry that is not two finite numbers, 0 or more.
    """
    path = infer_config_path(outputs, fold)
    if not path.is_file():
        return None, path
    balances = script_io.read_json_object(path).get("stage_balance")
    if balances is None:
        return None, path
    if not (isinstance(balances, list) and len(balances) == 2 and all(map(psg_layout.is_stage_balance, balances))):
        raise InputError(f"stage_balance must be a list of two finite numbers, 0 or more (one per model), got "
                         f"{balances!r} {where(path)}")
    return [float(value) for value in balances], path

def _infer_record(outputs: Path, fold: int) -> dict:
    balances, path = recorded_stage_balances(outputs, fold)
    if not path.is_file():
        raise InputError(f"no infer_blend.py record {where(path)}; run infer_blend.py with --out {outputs}")
    if balances is None:
        raise InputError(f"no stage_balance of the two models; run infer_blend.py again {where(path)}")
    if balances[0] != balances[1]:
        raise InputError(f"the models were trained with different --stage-balance ({balances[0]} and "
                         f"{balances[1]}), so their blend has no one set of training stage shares for the hmm "
                         f"{where(path)}")
    return script_io.read_json_object(path)

def validation_scores(probabilities: np.ndarray, stages: np.ndarray, valid: psg_layout.EpochTable, model: tuple,
                      weight: float) -> dict:
    """Validation macro-F1 of the blend (``stages``), the rules and the hmm (decoding ``probabilities``), the
    standard error of the rules' and the hmm's difference from the blend (:func:`paired_difference_se`), and each
    sleep statistic's mean a night: true, the blend's, after the rules and hmm-decoded."""
    from sleepstaging.scoring.sleep_statistics import sleep_statistics
    labels, ids = valid.labels, valid.recording_ids
    decoded = hmm.hmm_decode(probabilities, ids, *model, transition_weight=weight)
    ruled = apply_rules(stages, ids)[0]
    recordings = np.asarray(ids)
    statistics = {}
    for name, series in (("true", labels), ("hmm", decoded), ("blend", stages), ("rules", ruled)):
        per_night = [sleep_statistics(series[recordings == r]) for r in dict.fromkeys(ids)]
        statistics[name] = {key: float(np.nanmean([night[key] for night in per_night]))
                            for key in ("TST", "WASO", "N1", "N2", "N3", "REM", "awakenings", "stage_shifts")}
    return {"blend_macro_f1": blend.macro_f1(labels, stages),
            "rules_macro_f1": blend.macro_f1(labels, ruled),
            "hmm_macro_f1": blend.macro_f1(labels, decoded),
            "difference_se_vs_blend": {"rules": paired_difference_se(labels, ruled, stages),
                                       "hmm": paired_difference_se(labels, decoded, stages)},
            "nights": len(set(ids)), "statistics_mean": statistics}

def validation_blend(outputs: Path, fold: int) -> tuple:
    """The fold's validation rows blended as ``blend_tune.json`` says, with infer_blend.py's record.

    Returns
    -------
    valid : psg_layout.EpochTable
        ``fold_<k>_valid.csv``: the validation rows and their stages.
    probabilities : np.ndarray, shape (rows, 5)
        :func:`blend.blend_probabilities` of the two validation dumps.
    stages : np.ndarray of int, shape (rows,)
        The blend's stages (:func:`blend.blend_scores`' argmax, as blend.py writes them).
    infer : dict
        infer_blend.py's record (models, kept epochs, stage balance).
    tuned : dict
        :func:`blend.read_tune_json` of ``blend_tune.json``.
    """
    infer = _infer_record(outputs, fold)
    tuned = blend.read_tune_json(tune_json_path(outputs))
    labels_csv = valid_csv_path(outputs, fold)
    if not labels_csv.is_file():
        raise InputError(f"no validation rows {where(labels_csv)}; infer_blend.py writes them when the data root "
                         f"holds the models' training CSV")
    valid = psg_layout.read_epoch_csv(labels_csv, with_labels=True)
    p1, p2 = (blend.load_probabilities(dump_path(outputs, infer[f"{key}_arch"], fold, infer[f"{key}_epochs"], "valid"),
                                       len(valid), str(labels_csv), blend.DUMP_HINT) for key in ("vit", "eff"))
    settings = (tuned["method"], tuned["ens_weight"], tuned["power"], blend.row_scales(tuned["dump_scale"], tuned["tta"]))
    return (valid, blend.blend_probabilities(p1, p2, *settings),
            blend.predict_stages(blend.blend_scores(p1, p2, *settings)), infer, tuned)
