"""Scoring a submission against the answers: metrics, the validation table's hmm, sleep statistics
true against predicted (Bland-Altman), the report and its figures (evaluate.py).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # without pyplot: no display backend, nothing global to close
from sklearn.metrics import (accuracy_score, cohen_kappa_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)

from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.scoring.night_outputs import HYPNOGRAM_ORDER
from sleepstaging.scoring.sleep_statistics import json_ready, sleep_statistics, statistic_unit
from sleepstaging.output_names import TRAINING_LOG_GLOB, run_config_path
from sleepstaging.scoring.hmm import hmm_from_counts
from sleepstaging.scoring.model_set import hmm_counts_outside
from sleepstaging.data.psg_layout import NUM_CLASSES, STAGES
from sleepstaging.script_io import InputError, where


LOG_CURVES = (("train_loss", "valid_loss"), ("valid_macro_f1", "valid_accuracy"))


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------
def read_answers(labels_csv: Path, test: psg_layout.EpochTable) -> np.ndarray:
    """Stage ints of the test rows, in test CSV order, from an answers CSV.

    The answers may list the rows in any order but must hold exactly the
    test CSV's ``IDnum`` values, with the same ``ID``.
    """
    if not labels_csv.is_file():
        raise InputError(f"no test answers {where(labels_csv)}; the challenge's are private: "
                         f"make_synthetic.py and render_edf.py write {psg_layout.TEST_LABELS_CSV}, or pass --labels")
    answers = psg_layout.read_epoch_csv(labels_csv, with_labels=True)
    by_idnum = {idnum: (row, recording) for row, (idnum, recording)
                in enumerate(zip(answers.idnums, answers.recording_ids))}
    rows = np.empty(len(test), dtype=np.int64)
    for test_row, (idnum, recording) in enumerate(zip(test.idnums, test.recording_ids)):
        found = by_idnum.get(idnum)
        if found is None or found[1] != recording:
            raise InputError(f"test row {recording},{idnum} ({test.path}:{test_row + 1}) has no answer "
                             f"{where(labels_csv)}")
        rows[test_row] = found[0]
    if len(answers) != len(test):
        test_idnums = set(test.idnums)
        extra = next(row for row, idnum in enumerate(answers.idnums) if idnum not in test_idnums)
        raise InputError(f"answers list {len(answers)} rows, the test CSV {len(test)}; "
                         f"{answers.idnums[extra]} is not a test row {where(labels_csv, extra + 1)}")
    return answers.labels[rows]


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------
def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, recording_ids) -> dict:
    """The report's numbers, all from scikit-learn.

    Parameters
    ----------
    y_true, y_pred : np.ndarray of int, shape (rows,)
        True and predicted stage ints.
    recording_ids : sequence of str, length rows

    Returns
    -------
    dict
        ``rows``, ``recordings``, ``macro_f1``, ``accuracy``,
        ``cohen_kappa``, ``per_class`` (stage -> precision, recall, f1,
        support), ``confusion_matrix`` (true stage rows x predicted stage
        columns, counts), ``confusion_matrix_row_normalised`` (each row
        divided by its sum; 0 for a stage absent from the answers),
        ``per_recording_macro_f1`` (ID -> macro-F1 of its rows).
    """
    classes = list(range(NUM_CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0)
    counts = confusion_matrix(y_true, y_pred, labels=classes)
    row_sums = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)
    recording_array = np.asarray(recording_ids)
    per_recording = {}
    for recording in dict.fromkeys(recording_ids):
        rows = recording_array == recording
        per_recording[recording] = float(f1_score(y_true[rows], y_pred[rows], average="macro"))
    return {
        "rows": int(len(y_true)),
        "recordings": len(per_recording),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro")),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "cohen_kappa": float(cohen_kappa_score(y_true, y_pred)),
        "per_class": {name: {"precision": float(precision[c]), "recall": float(recall[c]),
                             "f1": float(f1[c]), "support": int(support[c])} for c, name in enumerate(STAGES)},
        "confusion_matrix": counts.tolist(),
        "confusion_matrix_row_normalised": normalised.round(6).tolist(),
        "per_recording_macro_f1": per_recording,
    }


def hmm_outside_fold(data_root: Path | str, valid: psg_layout.EpochTable, stage_balance: float = 0.0):
    """The HMM counted from the training rows that are not validation rows; None without a training CSV.

    The same counts a model set records (:func:`model_set.hmm_counts_outside`);
    ``stage_balance``: the models' ``--stage-balance`` (``hmm.training_stage_shares``).
    """
    if not (Path(data_root) / psg_layout.TRAIN_CSV).is_file():
        return None
    return hmm_from_counts(hmm_counts_outside(data_root, valid), stage_balance)


def training_config(weights_dir: Path | str, arch: str, fold: int) -> tuple[dict | None, Path]:
    """A model's training configuration (output_names.run_config_path's file) and that file's path.

    ``None`` when the file is absent.
    """
    path = run_config_path(weights_dir, arch, fold)
    return (script_io.read_json_object(path) if path.is_file() else None), path


def training_cv(weights_dir: Path | str, arch: str, fold: int) -> tuple[str | None, Path]:
    """The ``cv`` a model was trained with, from its training configuration, and that file's path.

    ``None`` when the configuration is absent or says no ``cv``.
    """
    config, path = training_config(weights_dir, arch, fold)
    cv = (config or {}).get("cv")
    return (None if cv is None else str(cv)), path


# --------------------------------------------------------------------------
# Sleep statistics: true against predicted hypnograms
# --------------------------------------------------------------------------
LIMITS_OF_AGREEMENT_Z = 1.96  # 95 % limits of agreement (Bland & Altman 1986)


def limits_of_agreement(true_values: np.ndarray, predicted_values: np.ndarray) -> dict:
    """Bland-Altman agreement of one statistic over recordings.

    Parameters
    ----------
    true_values, predicted_values : np.ndarray of float, shape (recordings,)
        The statistic from the true and from the predicted hypnograms; NaN
        where undefined. Recordings where either is NaN are left out.

    Returns
    -------
    dict
        ``n`` (recordings used), ``mean_true``, ``mean_predicted``, ``bias``
        (mean of predicted - true), ``sd`` (sample SD of the differences,
        ddof 1), ``loa_low``, ``loa_high`` (bias -+ 1.96 sd). Floats, NaN
        when undefined: everything but ``n`` without recordings, ``sd`` and
        the limits with fewer than two.
    """
    both = ~(np.isnan(true_values) | np.isnan(predicted_values))
    true_values, predicted_values = true_values[both], predicted_values[both]
    n = int(both.sum())
    differences = predicted_values - true_values
    bias = float(differences.mean()) if n else math.nan
    sd = float(differences.std(ddof=1)) if n >= 2 else math.nan
    return {"n": n, "mean_true": float(true_values.mean()) if n else math.nan,
            "mean_predicted": float(predicted_values.mean()) if n else math.nan, "bias": bias, "sd": sd,
            "loa_low": bias - LIMITS_OF_AGREEMENT_Z * sd, "loa_high": bias + LIMITS_OF_AGREEMENT_Z * sd}


def statistics_agreement(y_true: np.ndarray, y_pred: np.ndarray, recording_ids,
                         epoch_seconds: float = psg_layout.EPOCH_SECONDS) -> dict:
    """Sleep statistics of the true and the predicted hypnogram of each recording, and their agreement.

    Parameters
    ----------
    y_true, y_pred : np.ndarray of int, shape (rows,)
        True and predicted stage ints; a recording's rows, in file order,
        are its hypnogram (listed epochs only, see sleep_statistics.py).
    recording_ids : sequence of str, length rows
    epoch_seconds : float

    Returns
    -------
    dict
        ``per_recording``: ID -> ``{"true", "predicted", "difference"}``,
        each a :func:`sleep_statistics.sleep_statistics` dict (difference:
        predicted - true, NaN where either is undefined); ``agreement``:
        statistic -> :func:`limits_of_agreement`.
    """
    recording_array = np.asarray(recording_ids)
    per_recording = {}
    for recording in dict.fromkeys(recording_ids):
        rows = recording_array == recording
        true, predicted = sleep_statistics(y_true[rows], epoch_seconds), sleep_statistics(y_pred[rows], epoch_seconds)
        per_recording[recording] = {"true": true, "predicted": predicted,
                                    "difference": {key: predicted[key] - true[key] for key in true}}
    keys = list(next(iter(per_recording.values()))["true"]) if per_recording else []
    agreement = {key: limits_of_agreement(
        np.array([entry["true"][key] for entry in per_recording.values()], dtype=np.float64),
        np.array([entry["predicted"][key] for entry in per_recording.values()], dtype=np.float64)) for key in keys}
    return {"per_recording": per_recording, "agreement": agreement}


def statistics_report_lines(statistics: dict) -> list:
    """``report.md``'s table: per statistic the true and predicted means, the bias and the limits of agreement."""
    def number(value):
        return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"

    lines = ["## Sleep statistics: predicted against true hypnograms", "",
             "Per recording in `metrics.json` (`sleep_statistics`). Bias: mean of predicted - true over the "
             "recordings where both are defined (n); 95 % limits of agreement: bias +- 1.96 SD "
             "(Bland-Altman).", "",
             "| statistic | unit | true mean | predicted mean | bias | 95 % limits of agreement | n |",
             "|---|---|---|---|---|---|---|"]
    for key, entry in statistics["agreement"].items():
        lines.append(f"| {key} | {statistic_unit(key)} | {number(entry['mean_true'])} | "
                     f"{number(entry['mean_predicted'])} | {number(entry['bias'])} | "
                     f"{number(entry['loa_low'])} to {number(entry['loa_high'])} | {entry['n']} |")
    return lines + [""]


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------
def plot_confusion(metrics: dict, path: Path) -> None:
    """Counts and row-normalised confusion matrices side by side."""
    fig = Figure(figsize=(11, 4.6))
    axes = fig.subplots(1, 2)
    for ax, key, title, fmt in ((axes[0], "confusion_matrix", "counts", "d"),
                                (axes[1], "confusion_matrix_row_normalised", "row-normalised (recall)", ".2f")):
        matrix = np.array(metrics[key])
        ax.imshow(matrix if key.endswith("normalised") else matrix / max(matrix.max(), 1), cmap="Blues", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=9)
        ax.set_xticks(range(NUM_CLASSES), STAGES)
        ax.set_yticks(range(NUM_CLASSES), STAGES)
        ax.set_xlabel("predicted stage")
        ax.set_ylabel("true stage")
        ax.set_title(title)
    fig.suptitle(f"macro-F1 {metrics['macro_f1']:.4f}, accuracy {metrics['accuracy']:.4f}")
    fig.tight_layout()
    save_figure(fig, path)


def plot_hypnograms(y_true: np.ndarray, y_pred: np.ndarray, recording_ids, count: int, path: Path) -> list:
    """True and predicted hypnograms of the first ``count`` recordings; returns their IDs."""
    recording_array = np.asarray(recording_ids)
    shown = list(dict.fromkeys(recording_ids))[:count]
    height_of = np.array([HYPNOGRAM_ORDER.index(name) for name in STAGES])
    fig = Figure(figsize=(11, 2.4 * len(shown)))
    axes = fig.subplots(len(shown), 1, squeeze=False)
    for ax, recording in zip(axes[:, 0], shown):
        rows = np.flatnonzero(recording_array == recording)
        hours = np.arange(len(rows) + 1) * psg_layout.EPOCH_SECONDS / 3600
        # the true hypnogram wide and grey underneath, the prediction thin on top: where
        # they differ, red leaves the grey band
        for stages, style, label in ((y_true, dict(color="0.6", lw=3.0), "true"),
                                     (y_pred, dict(color="tab:red", lw=0.7), "predicted")):
            heights = height_of[stages[rows]]
            ax.stairs(heights, hours, baseline=None, label=label, **style)
        ax.set_yticks(range(NUM_CLASSES), HYPNOGRAM_ORDER)
        ax.set_xlim(0, hours[-1])
        f1 = f1_score(y_true[rows], y_pred[rows], average="macro")
        ax.set_title(f"{recording}: macro-F1 {f1:.3f}", fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].set_xlabel("hours from the first scored epoch")
    fig.tight_layout()
    save_figure(fig, path)
    return shown


def read_training_logs(weights_dir: Path) -> dict:
    """The trainers' ``*_log.csv`` files as DataFrames, keyed by file stem.

    Tolerant of their columns: a file is kept when it has an ``epoch``
    column and at least one of the curves in :data:`LOG_CURVES`; unreadable
    files are skipped.
    """
    logs = {}
    for path in sorted(Path(weights_dir).glob(TRAINING_LOG_GLOB)):
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        curves = [c for pair in LOG_CURVES for c in pair if c in frame.columns]
        if "epoch" in frame.columns and curves:
            logs[path.stem] = frame
    return logs


def plot_training_curves(logs: dict, path: Path) -> None:
    """Losses (left) and validation scores (right) per epoch of each training log."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for number, (name, frame) in enumerate(logs.items()):
        for ax, columns in zip(axes, LOG_CURVES):
            # one colour per run; solid: the first curve of the pair, dashed: the second
            for column, style in zip(columns, ("-o", "--s")):
                if column in frame.columns:
                    ax.plot(frame["epoch"], frame[column], style, color=f"C{number}", ms=3, label=f"{name}: {column}")
    axes[0].set_title("loss")
    axes[1].set_title("validation")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    with script_io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
def render_report(metrics: dict, config: dict, hypnogram_ids: list, has_curves: bool) -> str:
    """``report.md``: the metrics as tables, the figures as images."""
    lines = ["# Evaluation report", "",
             f"Submission `{config['pred']}` against `{config['labels']}`: "
             f"{metrics['rows']} epochs of {metrics['recordings']} recordings.", "",
             "| macro-F1 (challenge metric) | accuracy | Cohen's kappa |", "|---|---|---|",
             f"| {metrics['macro_f1']:.4f} | {metrics['accuracy']:.4f} | {metrics['cohen_kappa']:.4f} |", "",
             "## Per stage", "", "| stage | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, values in metrics["per_class"].items():
        lines.append(f"| {name} | {values['precision']:.4f} | {values['recall']:.4f} | {values['f1']:.4f} "
                     f"| {values['support']} |")
    lines += ["", "## Confusion matrix", "", "Rows: true stage; columns: predicted stage.", "",
              "![confusion matrix](confusion_matrix.png)", ""]
    per_recording = metrics["per_recording_macro_f1"]
    values = np.array(list(per_recording.values()))
    lines += ["## Per recording", "",
              f"Macro-F1 over {len(values)} recordings: mean {values.mean():.4f}, median {np.median(values):.4f}, "
              f"min {values.min():.4f}, max {values.max():.4f} (all in `metrics.json`). The five lowest:", "",
              "| recording | macro-F1 |", "|---|---|"]
    for recording, value in sorted(per_recording.items(), key=lambda item: item[1])[:5]:
        lines.append(f"| {recording} | {value:.4f} |")
    lines += ["", f"## Hypnograms ({', '.join(hypnogram_ids)})", "", "![hypnograms](hypnograms.png)", ""]
    if "sleep_statistics" in metrics:
        lines += statistics_report_lines(metrics["sleep_statistics"])
    validation = metrics.get("validation")
    if validation:
        best = validation["blend"]
        lines += ["## Validation: what each step buys", "",
                  f"Fold {config['fold']}, {validation['rows']} validation epochs. Blend weights tuned on these "
                  f"rows (`blend.py --tune`, --dump-scale {best['dump_scale']}); best: {best['method']}, "
                  f"w={best['ens_weight']:.2f}.", "",
                  "| step | setting | macro-F1 | accuracy |", "|---|---|---|---|"]
        for entry in validation["table"]:
            lines.append(f"| {entry['step']} | {entry['setting']} | {entry['macro_f1']:.4f} | {entry['accuracy']:.4f} |")
        lines.append("")
        if validation["context_note"]:
            lines += [f"Note: {validation['context_note']}.", ""]
    if has_curves:
        lines += ["## Training curves", "", f"From `{config['weights_dir']}/{TRAINING_LOG_GLOB}`.", "",
                  "![training curves](training_curves.png)", ""]
    return "\n".join(lines)


def write_report(out: Path, metrics: dict, config: dict, y_true: np.ndarray, y_pred: np.ndarray, recording_ids,
                 args, extra_lines: list[str] = ()) -> None:
    """Write the figures, ``metrics.json``, ``report.md`` (``extra_lines`` at its end) and ``config.json`` into
    ``out``, each file in one atomic write."""
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion(metrics, out / "confusion_matrix.png")
    hypnogram_ids = plot_hypnograms(y_true, y_pred, recording_ids, args.hypnograms, out / "hypnograms.png")
    logs = read_training_logs(args.weights_dir)
    if logs:
        plot_training_curves(logs, out / "training_curves.png")
    with script_io.atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(json_ready(metrics), indent=2, allow_nan=False))
    with script_io.atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join([render_report(metrics, config, hypnogram_ids, bool(logs)), *extra_lines]))
    with script_io.atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2))
