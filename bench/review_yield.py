"""The review's yield: how much checking the first k % of epochs the review page puts first fixes.

From a demo's outputs (``bash run.sh demo``: ``demo/DATA``, ``demo/outputs``,
``demo/weights``), for each ordering of the test epochs
(``review_page.ORDERINGS``: the blend's confidence, the models'
disagreement, their mean) and for random orders (mean of ``--seeds``), the
first k % (``--fractions``: 5, 10, 20) are corrected from the true labels
(``testset-labels.csv``, as evaluate.py reads them) and the scoring's
macro-F1, Cohen's kappa, errors left and share of the errors removed are
reported. The scoring corrected is the model set's default: the hmm's
(``--scoring``, ``files_hmm.csv`` as run.sh writes it), else the blend's
argmax. Also the calibration: the temperature fitted on the validation
rows' blend (``model_set.validation_blend``) and the test ECE (15 bins)
before and after it.

Writes ``bench/results/review_yield.json`` and ``.md`` (``--result``).

    python bench/review_yield.py --demo demo
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from sleepstaging.scoring import blend
from sleepstaging.scoring import calibration
from sleepstaging.scoring import review_page
FRACTIONS = (0.05, 0.10, 0.20)


def corrected_scores(y_true: np.ndarray, y_pred: np.ndarray, order: np.ndarray, fraction: float) -> dict:
    """Macro-F1, kappa and errors left after setting the first ``fraction`` of ``order`` to the truth."""
    from sklearn.metrics import cohen_kappa_score

    fixed = y_pred.copy()
    first = order[:int(round(fraction * len(order)))]
    fixed[first] = y_true[first]
    errors_before = int((y_pred != y_true).sum())
    errors_left = int((fixed != y_true).sum())
    return {"macro_f1": blend.macro_f1(y_true, fixed), "kappa": float(cohen_kappa_score(y_true, fixed)),
            "errors_left": errors_left,
            "errors_removed_share": (errors_before - errors_left) / errors_before if errors_before else 0.0}


def yield_table(y_true: np.ndarray, y_pred: np.ndarray, orders: dict, fractions=FRACTIONS, seeds: int = 20) -> dict:
    """Per ordering (and ``random``: the mean over ``seeds`` permutations), per fraction: :func:`corrected_scores`."""
    table = {name: {f"{f:g}": corrected_scores(y_true, y_pred, order, f) for f in fractions}
             for name, order in orders.items()}
    rng = np.random.default_rng(0)
    draws = [rng.permutation(len(y_true)) for _ in range(seeds)]
    table["random"] = {f"{f:g}": {key: float(np.mean([corrected_scores(y_true, y_pred, d, f)[key] for d in draws]))
                                  for key in ("macro_f1", "kappa", "errors_left", "errors_removed_share")}
                       for f in fractions}
    return table


def demo_inputs(demo: Path, scoring: Path | None):
    """Test labels, the scoring's stages, the blend and both models' test probabilities, and the validation blend."""
    from sleepstaging.scoring import evaluation
    from sleepstaging.scoring import model_set
    from sleepstaging.scoring import postprocess
    from sleepstaging.output_names import blend_csv_path, dump_path, probabilities_path

    data, outputs, weights = demo / "DATA", demo / "outputs", demo / "weights"
    record = model_set.read_model_set(weights)
    test = blend.read_test_csv(data)
    y_true = evaluation.read_answers(data / "testset-labels.csv", test)
    blend_csv = blend_csv_path(outputs, record["blend"]["method"], record["vit"]["epochs"], record["eff"]["epochs"])
    p_blend = np.load(probabilities_path(blend_csv))
    models = [np.load(dump_path(outputs, record[key]["arch"], record.get("fold", 0), record[key]["epochs"]))
              for key in ("vit", "eff")]
    scoring = scoring or outputs / "files_hmm.csv"
    y_pred = (postprocess.read_stage_lines(scoring, len(test), str(test.path), "run.sh demo writes it")
              if scoring.is_file() else p_blend.argmax(axis=1))
    valid, p_valid, _, _ = model_set.validation_blend(outputs, record.get("fold", 0))
    return y_true, y_pred, p_blend, models, (p_valid, valid.labels), str(scoring if scoring.is_file() else blend_csv)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=REPO / "demo")
    parser.add_argument("--scoring", type=Path, default=None, help="stage file corrected (default: files_hmm.csv)")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--result", type=Path, default=REPO / "bench" / "results" / "review_yield")
    args = parser.parse_args(argv)
    y_true, y_pred, p_blend, (p1, p2), (p_valid, valid_labels), scored = demo_inputs(args.demo, args.scoring)
    orders = {name: review_page.check_order(review_page.doubt(p_blend, p1, p2, name)) for name in review_page.ORDERINGS}
    temperature = calibration.fit_temperature(p_valid, valid_labels)
    result = {"scoring": scored, "epochs": len(y_true), "errors": int((y_pred != y_true).sum()),
              "table": yield_table(y_true, y_pred, orders, seeds=args.seeds),
              "calibration": {"temperature": temperature,
                              "test_ece_before": calibration.reliability(p_blend, y_true)["ece"],
                              "test_ece_after": calibration.reliability(
                                  calibration.apply_temperature(p_blend, temperature), y_true)["ece"]},
              "machine": platform.platform(), "command": "python bench/review_yield.py " + " ".join(argv or sys.argv[1:])}
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Review yield ({result['epochs']} test epochs, {result['errors']} errors in `{scored}`)", "",
             "| ordering | k | macro-F1 | kappa | errors left | errors removed |", "|---|---|---|---|---|---|"]
    for name, rows in result["table"].items():
        for k, row in rows.items():
            lines.append(f"| {name} | {float(k):.0%} | {row['macro_f1']:.3f} | {row['kappa']:.3f} | "
                         f"{row['errors_left']:.0f} | {row['errors_removed_share']:.0%} |")
    c = result["calibration"]
    lines += ["", f"Temperature {c['temperature']:.3f} (fitted on validation): test ECE {c['test_ece_before']:.3f} -> "
              f"{c['test_ece_after']:.3f} (15 bins).", "", f"`{result['command']}` on {result['machine']}"]
    args.result.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
