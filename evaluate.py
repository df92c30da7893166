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
* ``reliability.png`` and the report's calibration section (ECE, 15
  bins; also in ``metrics.json``, ``calibration``) when probabilities are
  beside the submission: a blend CSV's blended probabilities, before and
  after the model set's temperature, or the hmm's posterior of the stage
  it assigned (``postprocess.py --method hmm`` writes it, calibrated per
  stage assigned with a model set; the report says how, from the stage
  file's JSON);
* ``report.md``, which shows all of it (written once, whole).

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

Sleep statistics (sleep_statistics.py's definitions: TST, SOL, WASO, SE, stage
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
import functools
import json
import sys
from pathlib import Path

from sklearn.metrics import accuracy_score, f1_score

from sleepstaging import script_io
from sleepstaging.data import psg_layout
from sleepstaging.output_names import dump_path, report_dir, submission_path, valid_csv_path
from sleepstaging.scoring import calibration
from sleepstaging.scoring.blend import (
    DUMP_SCALES,
    METHODS,
    blend_probabilities,
    blend_scores,
    load_probabilities,
    predict_stages,
    read_test_csv,
    resolve_tta,
    row_scales,
    tune_blend,
)
from sleepstaging.scoring.evaluation import (
    compute_metrics,
    hmm_outside_fold,
    read_answers,
    statistics_agreement,
    training_cv,
    write_report,
)
from sleepstaging.scoring.hmm import hmm_decode
from sleepstaging.scoring.model_set import read_model_set, recorded_stage_balances
from sleepstaging.scoring.postprocess import read_stage_lines
from sleepstaging.scoring.rules import apply_rules
from sleepstaging.script_io import InputError

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
    row = functools.partial(_scored_row, labels)
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
    cv, config_path = training_cv(args.weights_dir, args.vit_arch, args.fold)
    context, note = _post_processing_rows(args, valid, p1, p2, best, cv, config_path)
    return {"rows": int(len(labels)),
            "blend": dict(zip(("method", "ens_weight", "power"), best[:3]), dump_scale=args.dump_scale, tta=tta),
            "cv": cv, "context_note": note, "table": table + context}


def _scored_row(labels, step: str, setting: str, stages) -> dict:
    """A row of the validation table: macro-F1 and accuracy of ``stages`` against ``labels`` (both shape (rows,))."""
    return {"step": step, "setting": setting, "macro_f1": float(f1_score(labels, stages, average="macro")),
            "accuracy": float(accuracy_score(labels, stages))}


def _post_processing_rows(args, valid, p1, p2, best: tuple, cv: str | None, config_path) -> tuple[list, str | None]:
    """The validation table's post-processing rows on the best blend ``best`` (method, weight, power, scales) of
    the dumps ``p1``, ``p2`` (rows, 5), and the note on rows left out or marked (None when there is none).

    None (the blend's argmax) always; the rules, with and without matching across recordings, and the hmm
    unless ``cv`` is ``stratified``; the hmm left out when the models' stage balances differ.
    """
    row = functools.partial(_scored_row, valid.labels)
    blended = predict_stages(blend_scores(p1, p2, *best))
    setting = f"on blend {best[0]}"
    rows = [row("post-processing none", setting, blended)]
    if cv == "stratified":
        return rows, (f"post-processing rules and hmm left out: the models were trained with --cv stratified "
                      f"({config_path}), so these validation rows are a random fifth of each night, not consecutive "
                      f"epochs, and context rules would read neighbours that are not there")
    note = None if cv is not None else (f"cv unknown (no {config_path}): the rules and hmm rows mean something "
                                        f"only if the models were trained with --cv subject")
    marked = setting if cv is not None else setting + " (cv unknown)"
    rows.append(row("post-processing rules", marked, apply_rules(blended, valid.recording_ids)[0]))
    rows.append(row("post-processing rules across recordings (the original's)", marked,
                    apply_rules(blended, valid.recording_ids, across_recordings=True)[0]))
    balances, _ = recorded_stage_balances(args.outputs, args.fold)  # None: 0, the original's
    if balances is not None and balances[0] != balances[1]:
        return rows, "; ".join(filter(None, [note, (
            f"post-processing hmm left out: the models were trained with different --stage-balance "
            f"({args.vit_arch} {balances[0]:g}, {args.eff_arch} {balances[1]:g}), so their blend has no "
            f"one set of training stage shares to divide by")]))
    stage_balance = 0.0 if balances is None else balances[0]
    hmm = hmm_outside_fold(args.data_root, valid, stage_balance)
    if hmm is not None:
        decoded = hmm_decode(blend_probabilities(p1, p2, *best), valid.recording_ids, *hmm)
        rows.append(row("post-processing hmm", f"{marked}, HMM from the other folds, stage balance "
                        f"{stage_balance:g}", decoded))
        rows += _model_set_hmm_rows(args, valid, blend_probabilities(p1, p2, *best), hmm, marked, stage_balance)
    return rows, note


def _model_set_hmm_rows(args, valid, probabilities, hmm_model: tuple, setting: str, stage_balance: float) -> list:
    """The hmm row at the transition weight of the model set in ``--weights-dir`` (what new nights get), when
    it records one other than 1 for the same stage balance; else none.

    That weight was chosen on these very rows (model_set.py), so the row is optimistic; it is the plain
    hmm's row (weight 1) decoded with ``hmm_model`` at that weight.
    """
    record = read_model_set(args.weights_dir)
    if record is None:
        return []
    weight, balance = float(record["hmm"]["transition_weight"]), float(record["hmm"]["stage_balance"])
    if weight == 1.0 or balance != stage_balance:
        return []
    decoded = hmm_decode(probabilities, valid.recording_ids, *hmm_model, transition_weight=weight)
    return [_scored_row(valid.labels, f"post-processing hmm at the model set's transition weight {weight:g}",
                        f"{setting}, the weight chosen on these rows", decoded)]


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

    args.out.mkdir(parents=True, exist_ok=True)
    calibration_lines, metrics["calibration"] = calibration.evaluation_section(
        args.pred, read_model_set(args.weights_dir), y_true, y_pred, args.out)  # reliability.png
    write_report(args.out, metrics, config, y_true, y_pred, test.recording_ids, args, calibration_lines)

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
