"""Score a submission against the test answers and write a report.

Reads the submission (``outputs/files_post.csv``, one stage per line, test
CSV order) and the answers (``DATA/testset-labels.csv``, ``ID,IDnum,label``;
the challenge's answers are private, the synthetic generator and the EDF
renderer write them), and writes to ``--out``:

* ``metrics.json``: macro-F1 (the challenge metric), accuracy, Cohen's
  kappa, per-class precision/recall/F1/support, the confusion matrix (counts
  and row-normalised: each true stage's row sums to 1), per-recording
  macro-F1, the sleep statistics below, and the validation table below when
  it was made;
* ``confusion_matrix.png``, ``hypnograms.png`` (true versus predicted
  stages of the first ``--hypnograms`` recordings), ``training_curves.png``
  (from the trainers' ``weights/*_log.csv``, when present);
* ``report.md``, which shows all of it.

When the fold's validation dumps exist (``outputs/<arch>_fold_<k>_<epochs>_valid.npy``
and ``outputs/fold_<k>_valid.csv``, written by infer_blend.py), the report
adds a validation table: each model alone, every blend method at its tuned
weight (tuned at ``--dump-scale``, as ``blend.py --tune`` tunes), then
post-processing none / rules / hmm of the best blend, so one sees what each
step buys. The hmm there is estimated from the training rows outside the
validation fold, and divides the blend by the stage shares the models were
trained on (``stage_balance`` as infer_blend.py recorded it beside the
dumps: ``model_set.recorded_stage_balances``; 0, the labels' shares,
without one); it is left out when the two models were trained
with different ``--stage-balance``. The rules and the hmm need
consecutive epochs: when the models were trained with ``--cv stratified``
(``cv`` in ``<weights-dir>/<vit-arch>_fold_<k>_config.json``), the
validation rows are a random fifth of each night, so those two steps are
left out of the table (said in the report); when that configuration is
absent, they are shown and marked "cv unknown".

Sleep statistics (hypnogram.py's definitions: TST, SOL, WASO, SE, stage
minutes and percentages, latencies, awakenings...) are computed per
recording from the true and from the predicted hypnogram (rows in test CSV
order), with their differences (predicted - true); for each statistic the
report gives the Bland-Altman mean bias and 95 % limits of agreement
(bias +- 1.96 SD of the differences) over the recordings where both are
defined.

Macro-F1 is scikit-learn's: averaged over the stages present in the
answers or the prediction.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # without pyplot: no display backend, nothing global to close
from sklearn.metrics import (accuracy_score, cohen_kappa_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)

import psg_layout
import script_io
from blend import (DUMP_SCALES, METHODS, blend_probabilities, blend_scores, load_probabilities, predict_stages,
                   read_test_csv, resolve_tta, row_scales, tune_blend)
from hypnogram import HYPNOGRAM_ORDER, json_ready, sleep_statistics, statistic_unit
from output_names import TRAINING_LOG_GLOB, dump_path, report_dir, run_config_path, submission_path, valid_csv_path
from hmm import hmm_decode, hmm_from_counts
from model_set import hmm_counts_outside, recorded_stage_balances
from postprocess import read_stage_lines
from rules import apply_rules
from psg_layout import NUM_CLASSES, STAGES
from script_io import InputError, where

# fmt: off
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=script_io.HelpFormatter)
parser.add_argument("--data-root", default="DATA", help="folder with testset-for_user.csv")
parser.add_argument("--pred", type=Path, default=submission_path("outputs"), help="the submission to score")
parser.add_argument("--labels", type=Path, default=None,
                    help="test answers ID,IDnum,label (default: <data-root>/testset-labels.csv)")
parser.add_argument("--out", type=Path, default=report_dir("outputs"), help="report folder")
parser.add_argument("--outputs", type=Path, default=Path("outputs"),
                    help="folder with the validation dumps and fold_<k>_valid.csv (for the validation table)")
parser.add_argument("--weights-dir", type=Path, default=Path("weights"), help="folder with the trainers' *_log.csv")
parser.add_argument("--vit-arch", default="vit_base_patch16_224")
parser.add_argument("--eff-arch", default="tf_efficientnet_b4_ns")
parser.add_argument("--vit-epochs", type=int, nargs="+", default=[4])
parser.add_argument("--eff-epochs", type=int, nargs="+", default=[1])
parser.add_argument("--fold", type=int, default=0)
parser.add_argument("--power", type=float, default=0.25, help="exponent of the 'square' blend")
parser.add_argument("--dump-scale", choices=DUMP_SCALES, default="original",
                    help="row scales of the dumps in the validation table's blends, as blend.py's --dump-scale")
parser.add_argument("--tta", type=int, default=None,
                    help="TTA rounds for --dump-scale original (default: from <outputs>/infer_blend_fold_<k>.json, "
                         "else 1), as blend.py's --tta")
parser.add_argument("--hypnograms", type=int, default=3, help="how many recordings to draw")
parser.add_argument("--quiet", action="store_true", help="no progress bar")
# fmt: on

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


def validation_table(args, quiet: bool) -> dict | None:
    """Macro-F1 and accuracy on the fold's validation rows of each step of the flow.

    Reads ``--outputs``' validation dumps and ``fold_<k>_valid.csv``; the hmm
    row needs ``--data-root``'s training CSV. The rules and hmm rows are
    left out when model 1 was trained with ``--cv stratified``, and marked
    when its training configuration is absent. The hmm divides by the stage
    shares the models were trained on (infer_blend.py's record of their
    ``stage_balance``, 0 without one) and is left out when the two differ.

    Returns
    -------
    dict or None
        None when the validation dumps or ``fold_<k>_valid.csv`` are absent.
        Otherwise ``rows`` (validation rows), ``blend`` (the best tuned
        method, weight, power, dump scale, tta), ``cv`` (model 1's, or
        None when unknown), ``context_note`` (why the rules and hmm rows are
        missing or marked; None when they are plain) and ``table``: a list
        of ``{"step", "setting", "macro_f1", "accuracy"}``.
    """
    labels_csv = valid_csv_path(args.outputs, args.fold)
    dumps = [dump_path(args.outputs, args.vit_arch, args.fold, args.vit_epochs, "valid"),
             dump_path(args.outputs, args.eff_arch, args.fold, args.eff_epochs, "valid")]
    if not (labels_csv.is_file() and all(path.is_file() for path in dumps)):
        return None
    valid = psg_layout.read_epoch_csv(labels_csv, with_labels=True)
    labels = valid.labels
    p1, p2 = (load_probabilities(path, len(labels), str(labels_csv), "make it with infer_blend.py") for path in dumps)

    def row(step, setting, stages):
        return {"step": step, "setting": setting, "macro_f1": float(f1_score(labels, stages, average="macro")),
                "accuracy": float(accuracy_score(labels, stages))}

    table = [row("model 1 alone", args.vit_arch, predict_stages(p1)),
             row("model 2 alone", args.eff_arch, predict_stages(p2))]
    tta = resolve_tta(args.tta, args.outputs, args.fold)[0] if args.dump_scale == "original" else 1
    scales = row_scales(args.dump_scale, tta)
    tuned = tune_blend(p1, p2, labels, args.power, quiet, scales)
    for method in METHODS:
        weight = tuned["per_method"][method]["ens_weight"]
        setting = "w ignored" if method == "rank" else f"w={weight:.3g}"
        table.append(row(f"blend {method}", setting,
                         predict_stages(blend_scores(p1, p2, method, weight, args.power, scales))))

    best = (tuned["method"], tuned["ens_weight"], tuned["power"], scales)
    blended = predict_stages(blend_scores(p1, p2, *best))
    setting = f"on blend {best[0]}"
    table.append(row("post-processing none", setting, blended))
    cv, config_path = training_cv(args.weights_dir, args.vit_arch, args.fold)
    if cv == "stratified":
        note = (f"post-processing rules and hmm left out: the models were trained with --cv stratified "
                f"({config_path}), so these validation rows are a random fifth of each night, not consecutive "
                f"epochs, and context rules would read neighbours that are not there")
    else:
        note = None if cv is not None else (f"cv unknown (no {config_path}): the rules and hmm rows mean something "
                                            f"only if the models were trained with --cv subject")
        marked = setting if cv is not None else setting + " (cv unknown)"
        table.append(row("post-processing rules", marked, apply_rules(blended, valid.recording_ids)[0]))
        table.append(row("post-processing rules across recordings (the original's)", marked,
                         apply_rules(blended, valid.recording_ids, across_recordings=True)[0]))
        balances, _ = recorded_stage_balances(args.outputs, args.fold)  # None: 0, the original's
        if balances is not None and balances[0] != balances[1]:
            note = "; ".join(filter(None, [note, (
                f"post-processing hmm left out: the models were trained with different --stage-balance "
                f"({args.vit_arch} {balances[0]:g}, {args.eff_arch} {balances[1]:g}), so their blend has no "
                f"one set of training stage shares to divide by")]))
        else:
            stage_balance = 0.0 if balances is None else balances[0]
            hmm = hmm_outside_fold(args.data_root, valid, stage_balance)
            if hmm is not None:
                decoded = hmm_decode(blend_probabilities(p1, p2, *best), valid.recording_ids, *hmm)
                table.append(row("post-processing hmm", f"{marked}, HMM from the other folds, stage balance "
                                 f"{stage_balance:g}", decoded))
    return {"rows": int(len(labels)),
            "blend": dict(zip(("method", "ens_weight", "power"), best[:3]), dump_scale=args.dump_scale, tta=tta),
            "cv": cv, "context_note": note, "table": table}


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
        are its hypnogram (listed epochs only, see hypnogram.py).
    recording_ids : sequence of str, length rows
    epoch_seconds : float

    Returns
    -------
    dict
        ``per_recording``: ID -> ``{"true", "predicted", "difference"}``,
        each a :func:`hypnogram.sleep_statistics` dict (difference:
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
                 args) -> None:
    """Write the figures, ``metrics.json``, ``report.md`` and ``config.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion(metrics, out / "confusion_matrix.png")
    hypnogram_ids = plot_hypnograms(y_true, y_pred, recording_ids, args.hypnograms, out / "hypnograms.png")
    logs = read_training_logs(args.weights_dir)
    if logs:
        plot_training_curves(logs, out / "training_curves.png")
    with script_io.atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(json_ready(metrics), indent=2, allow_nan=False))
    with script_io.atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_report(metrics, config, hypnogram_ids, bool(logs)))
    with script_io.atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2))


# --------------------------------------------------------------------------
def main(argv=None) -> None:
    args = parser.parse_args(argv)
    if args.hypnograms < 1:
        raise InputError(f"--hypnograms must be at least 1, got {args.hypnograms}")
    if args.labels is None:
        args.labels = Path(args.data_root) / psg_layout.TEST_LABELS_CSV
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    print("config: " + json.dumps(config))
    test = read_test_csv(args.data_root)
    y_pred = read_stage_lines(args.pred, len(test), str(test.path),
                              "make it with postprocess.py (or blend.py), or pass --pred")
    y_true = read_answers(args.labels, test)
    metrics = compute_metrics(y_true, y_pred, test.recording_ids)
    metrics["sleep_statistics"] = statistics_agreement(y_true, y_pred, test.recording_ids)
    validation = validation_table(args, quiet=args.quiet or not sys.stderr.isatty())
    if validation is not None:
        metrics["validation"] = validation

    write_report(args.out, metrics, config, y_true, y_pred, test.recording_ids, args)
    import calibration

    calibration.evaluation_section(args.pred, args.weights_dir, y_true, args.out)  # ECE, reliability.png

    print(f"test macro-F1 {metrics['macro_f1']:.4f}, accuracy {metrics['accuracy']:.4f}, "
          f"kappa {metrics['cohen_kappa']:.4f} on {metrics['rows']} epochs")
    if validation is not None:
        for entry in validation["table"]:
            print(f"  validation {entry['step']:<48} {entry['setting']:<36} macro-F1 {entry['macro_f1']:.4f}")
        if validation["context_note"]:
            print(f"  note: {validation['context_note']}")
    print(f"{args.out / 'report.md'} is saved")


if __name__ == "__main__":
    script_io.run_main(main)
