"""The review's yield: how much checking the first k % of epochs the review page puts first fixes.

From a demo's outputs (``bash run.sh demo``: ``demo/DATA``, ``demo/outputs``,
``demo/weights``), for each ordering of the test epochs
(``review_page.ORDERINGS``: the blend's doubt, the models' disagreement,
their mean, the hmm's doubt: 1 - its posterior of the stage the scoring
assigned) and for random orders (mean of ``--seeds``), the first k %
(``--fractions``: 5, 10, 20) are corrected from the true labels
(``testset-labels.csv``, as evaluate.py reads them) and the scoring's
macro-F1, Cohen's kappa, errors left and share of the errors removed are
reported. The scoring corrected is the model set's default, the hmm:
``--scoring`` (``files_hmm.csv`` as run.sh writes it), else the model
set's hmm decoded here. The ordering that removes the largest share of
the errors at 10 % is named (``chosen_ordering``; ties: the first of
``review_page.ORDERINGS``): the review page's default should be it
(``review_page.DEFAULT_ORDERING``; the bench says when it is not).

Also the calibration (15 bins): the temperatures fitted on the validation
rows (``calibration.calibration_record``, as ``model_set.py`` fits them)
and the test ECE before and after, of the blend (its largest probability)
and of the hmm's posterior of the stage the scoring assigned: calibrated
per stage assigned (as ``postprocess.py`` writes it; the hmm ordering uses
it) and by one temperature (as model sets did before), with each stage's
accuracy and mean posterior, decoding by posterior marginals for
comparison, and the hmm ordering's yield with one temperature. Whether the
validation rows could have told the two calibrations apart: each
validation night's ECE with the temperatures fitted on the other nights
(:func:`held_out_night_ece`).

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


from sleepstaging.data import psg_layout
from sleepstaging.scoring import blend
from sleepstaging.scoring import calibration
from sleepstaging.scoring import hmm
from sleepstaging.scoring import review_page

REPO = Path(__file__).resolve().parents[1]
FRACTIONS = (0.05, 0.10, 0.20)
CHOOSE_AT = 0.10  # the review's target: the first 10 % hold at least 60 % of the errors


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


def ceiling_share(epochs: int, errors: int, fraction: float = CHOOSE_AT) -> float:
    """The largest share of the errors that checking the first ``fraction`` of ``epochs`` can remove: a perfect
    ordering puts every wrong epoch first, so min(1, epochs checked / errors); 0 without errors."""
    return min(1.0, int(round(fraction * epochs)) / errors) if errors else 0.0


def choose_ordering(table: dict, fraction: float = CHOOSE_AT) -> str:
    """The page's ordering (not ``random``) whose first ``fraction`` removes the largest share of the errors;
    on a tie the first of ``review_page.ORDERINGS``."""
    candidates = [name for name in review_page.ORDERINGS if name in table]
    return max(candidates, key=lambda name: (table[name][f"{fraction:g}"]["errors_removed_share"],
                                             -candidates.index(name)))


def demo_inputs(demo: Path, scoring: Path | None) -> dict:
    """Test labels and ids, the blend and both models' test probabilities, the model set's hmm, the scoring's
    stages (the scoring file, else the hmm decoded here) and the validation rows' blend."""
    from sleepstaging.scoring import evaluation
    from sleepstaging.scoring import model_set
    from sleepstaging.scoring import postprocess
    from sleepstaging.output_names import blend_csv_path, dump_path, probabilities_path

    data, outputs, weights = demo / "DATA", demo / "outputs", demo / "weights"
    record = model_set.read_model_set(weights)
    test = blend.read_test_csv(data)
    blend_csv = blend_csv_path(outputs, record["blend"]["method"], record["vit"]["epochs"], record["eff"]["epochs"])
    inputs = {"y_true": evaluation.read_answers(data / "testset-labels.csv", test), "ids": test.recording_ids,
              "blend": np.load(probabilities_path(blend_csv)).astype(np.float64),
              "models": [np.load(dump_path(outputs, record[key]["arch"], record.get("fold", 0), record[key]["epochs"]))
                         for key in ("vit", "eff")],
              "hmm": (hmm.hmm_from_counts(record["hmm"]["counts"], record["hmm"]["stage_balance"]),
                      record["hmm"]["transition_weight"])}
    (model, weight), scoring = inputs["hmm"], scoring or outputs / "files_hmm.csv"
    if scoring.is_file():
        inputs["y_pred"] = postprocess.read_stage_lines(scoring, len(test), str(test.path), "run.sh demo writes it")
        inputs["scored"] = str(scoring)
    else:
        inputs["y_pred"] = hmm.hmm_decode(inputs["blend"], test.recording_ids, *model, transition_weight=weight)
        inputs["scored"] = f"the model set's hmm decoded here ({scoring} is absent)"
    valid, p_valid, _, _, _ = model_set.validation_blend(outputs, record.get("fold", 0))
    inputs["valid"] = (p_valid.astype(np.float64), valid.labels, valid.recording_ids)
    return inputs


def per_stage_calibration(posterior: np.ndarray, calibrated: np.ndarray, y_pred: np.ndarray,
                          y_true: np.ndarray) -> dict:
    """Per stage assigned: test epochs, accuracy, mean posterior of the stage assigned before and after."""
    rows = np.arange(len(y_pred))
    table = {}
    for stage, name in enumerate(psg_layout.STAGES):
        assigned = y_pred == stage
        if assigned.any():
            table[name] = {"epochs": int(assigned.sum()), "accuracy": float((y_true[assigned] == stage).mean()),
                           "confidence_before": float(posterior[rows, y_pred][assigned].mean()),
                           "confidence_after": float(calibrated[rows, y_pred][assigned].mean())}
    return table


def held_out_night_ece(posterior: np.ndarray, assigned: np.ndarray, labels: np.ndarray, ids) -> dict | None:
    """The ECE of the hmm's posterior of the stage assigned, each night scaled by temperatures fitted on the
    other nights: none, one temperature, one per stage assigned (as ``calibration.calibration_record`` fits
    them); the nights' rows pooled. None for a single night: no other night to fit on.

    Parameters
    ----------
    posterior : np.ndarray, shape (n, 5)
    assigned, labels : np.ndarray of int, shape (n,)
        The stage assigned (Viterbi) and the true stage of each row.
    ids : sequence of str, length n
        Each row's recording.
    """
    ids = np.asarray(ids)
    nights = list(dict.fromkeys(ids.tolist()))
    if len(nights) < 2:
        return None
    scaled = {"none": np.empty_like(posterior), "one": np.empty_like(posterior), "per stage": np.empty_like(posterior)}
    for night in nights:
        held, rest = ids == night, ids != night
        temperature = calibration.fit_temperature(posterior[rest], labels[rest])
        stage_temperatures = calibration.fit_stage_temperatures(posterior[rest], assigned[rest], labels[rest],
                                                                temperature)
        scaled["none"][held] = posterior[held]
        scaled["one"][held] = calibration.apply_temperature(posterior[held], temperature)
        scaled["per stage"][held] = calibration.apply_stage_temperatures(posterior[held], assigned[held],
                                                                         stage_temperatures)
    return {name: calibration.assigned_reliability(rows, assigned, labels)["ece"] for name, rows in scaled.items()}


def calibrate(inputs: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """Temperatures fitted on validation and the test ECE before and after; the test hmm posterior calibrated
    per stage assigned (as postprocess.py writes it) and by one temperature (as model sets did before)."""
    (model, weight), (p_valid, labels, ids) = inputs["hmm"], inputs["valid"]
    valid_posterior = hmm.hmm_posterior(p_valid, ids, *model, transition_weight=weight)
    valid_decoded = hmm.hmm_decode(p_valid, ids, *model, transition_weight=weight)
    record = calibration.calibration_record(p_valid, labels, valid_posterior, valid_decoded)
    valid_calibrated = calibration.apply_stage_temperatures(valid_posterior, valid_decoded,
                                                            record["hmm_stage_temperatures"])
    posterior = hmm.hmm_posterior(inputs["blend"], inputs["ids"], *model, transition_weight=weight)
    y_true, y_pred, p_blend = inputs["y_true"], inputs["y_pred"], inputs["blend"]
    one_temperature = calibration.apply_temperature(posterior, record["hmm_temperature"])
    calibrated = calibration.apply_stage_temperatures(posterior, y_pred, record["hmm_stage_temperatures"])
    marginal = posterior.argmax(axis=1)  # decoding by posterior marginals instead of Viterbi, for comparison
    figures = {
        "temperature": record["temperature"], "hmm_temperature": record["hmm_temperature"],
        "hmm_stage_temperatures": record["hmm_stage_temperatures"], "hmm_stage_rows": record["hmm_stage_rows"],
        "test_ece_before": calibration.reliability(p_blend, y_true)["ece"],
        "test_ece_after": calibration.reliability(calibration.apply_temperature(p_blend, record["temperature"]),
                                                  y_true)["ece"],
        "test_hmm_ece_before": calibration.assigned_reliability(posterior, y_pred, y_true)["ece"],
        "test_hmm_ece_after_one_temperature": calibration.assigned_reliability(one_temperature, y_pred, y_true)["ece"],
        "test_hmm_ece_after": calibration.assigned_reliability(calibrated, y_pred, y_true)["ece"],
        "test_hmm_by_stage_assigned": per_stage_calibration(posterior, calibrated, y_pred, y_true),
        "validation_hmm_by_stage_assigned": per_stage_calibration(valid_posterior, valid_calibrated, valid_decoded,
                                                                  labels),
        "posterior_marginals": {"accuracy": float((marginal == y_true).mean()),
                                "viterbi_accuracy": float((y_pred == y_true).mean()),
                                "ece_before": calibration.reliability(posterior, y_true)["ece"]},
        "validation": {key: value for key, value in record.items() if key.startswith("validation")},
        "validation_hmm_ece_held_out_nights": held_out_night_ece(valid_posterior, valid_decoded, labels, ids)}
    return figures, calibrated, one_temperature


def orderings(inputs: dict, posterior: np.ndarray) -> dict:
    """Each of ``review_page.ORDERINGS`` of the test epochs (one order over all nights, as the bench corrects
    the first k % of all test epochs), from the blend as the page shows it: calibrated."""
    p1, p2 = inputs["models"]
    confidence = posterior[np.arange(len(posterior)), inputs["y_pred"]]
    return {name: review_page.check_order(review_page.doubt(inputs["blend"], p1, p2, name, confidence))
            for name in review_page.ORDERINGS}


def held_out_line(held_out: dict | None) -> str:
    """What :func:`held_out_night_ece` found, in one sentence."""
    if held_out is None:
        return "One validation night: no night held out to compare the calibrations on."
    return ("Each validation night with the temperatures fitted on the other nights (hmm posterior ECE, pooled): "
            + ", ".join(f"{name} {ece:.3f}" for name, ece in held_out.items()) + ".")


def report_lines(result: dict) -> list[str]:
    """The Markdown table of every ordering at every fraction, the choice and the calibration."""
    lines = [f"# Review yield ({result['epochs']} test epochs, {result['errors']} errors in {result['scoring']})", "",
             "| ordering | k | macro-F1 | kappa | errors left | errors removed |", "|---|---|---|---|---|---|"]
    for name, rows in result["table"].items():
        for k, row in rows.items():
            lines.append(f"| {name} | {float(k):.0%} | {row['macro_f1']:.3f} | {row['kappa']:.3f} | "
                         f"{row['errors_left']:.0f} | {row['errors_removed_share']:.0%} |")
    chosen, share = result["chosen_ordering"], result["table"][result["chosen_ordering"]][f"{CHOOSE_AT:g}"]
    lines += ["", f"Chosen ordering (largest share of the errors removed by the first {CHOOSE_AT:.0%}): {chosen}, "
              f"{share['errors_removed_share']:.0%}; review_page.DEFAULT_ORDERING is "
              f"{result['default_ordering']}" + ("." if chosen == result["default_ordering"] else
                                                 f": set it to {chosen!r}."),
              f"No ordering can remove more than {ceiling_share(result['epochs'], result['errors']):.0%} of the "
              f"errors with the first {CHOOSE_AT:.0%}: it checks {int(round(CHOOSE_AT * result['epochs']))} epochs "
              f"of the {result['errors']} wrong ones."]
    c = result["calibration"]
    stages = ", ".join(f"{stage} {t:.3f}" for stage, t in zip(psg_layout.STAGES, c["hmm_stage_temperatures"]))
    lines += ["", "Calibration (temperatures fitted on validation; test ECE, 15 bins): blend T "
              f"{c['temperature']:.3f}, {c['test_ece_before']:.3f} -> {c['test_ece_after']:.3f}; hmm posterior of "
              f"the stage assigned {c['test_hmm_ece_before']:.3f} -> {c['test_hmm_ece_after']:.3f} with a "
              f"temperature per stage assigned ({stages}; validation rows {c['hmm_stage_rows']}), "
              f"{c['test_hmm_ece_after_one_temperature']:.3f} with one temperature (T {c['hmm_temperature']:.3f}).",
              held_out_line(c["validation_hmm_ece_held_out_nights"]),
              "", "| stage assigned | rows | epochs | accuracy | mean posterior before | after |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {rows} | {row['epochs']} | {row['accuracy']:.3f} | {row['confidence_before']:.3f} | "
              f"{row['confidence_after']:.3f} |" for rows in ("test", "validation")
              for name, row in c[f"{rows}_hmm_by_stage_assigned"].items()]
    marginals, one = c["posterior_marginals"], result["hmm_one_temperature"]
    lines += ["", f"Decoding by posterior marginals instead of Viterbi: accuracy {marginals['accuracy']:.3f} "
              f"(Viterbi {marginals['viterbi_accuracy']:.3f}), ECE of its largest posterior "
              f"{marginals['ece_before']:.3f} uncalibrated.",
              f"The hmm ordering by the posterior calibrated with one temperature (as before the stage temperatures): "
              + ", ".join(f"{float(k):.0%} {row['errors_removed_share']:.0%}" for k, row in one.items())
              + " of the errors removed.", "", f"`{result['command']}` on {result['machine']}"]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=REPO / "demo")
    parser.add_argument("--scoring", type=Path, default=None, help="stage file corrected (default: files_hmm.csv)")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--result", type=Path, default=REPO / "bench" / "results" / "review_yield")
    args = parser.parse_args(argv)
    inputs = demo_inputs(args.demo, args.scoring)
    figures, posterior, one_temperature = calibrate(inputs)
    inputs["blend"] = calibration.apply_temperature(inputs["blend"], figures["temperature"])  # as the page shows it
    y_true, y_pred = inputs["y_true"], inputs["y_pred"]
    table = yield_table(y_true, y_pred, orderings(inputs, posterior), seeds=args.seeds)
    before = review_page.check_order(1 - one_temperature[np.arange(len(y_pred)), y_pred])
    hmm_one_temperature = {f"{f:g}": corrected_scores(y_true, y_pred, before, f) for f in FRACTIONS}
    result = {"scoring": inputs["scored"], "epochs": len(y_true), "errors": int((y_pred != y_true).sum()),
              "table": table, "chosen_ordering": choose_ordering(table), "chosen_at": CHOOSE_AT,
              "default_ordering": review_page.DEFAULT_ORDERING, "calibration": figures,
              "hmm_one_temperature": hmm_one_temperature,
              "machine": platform.platform(),
              "command": "python bench/review_yield.py " + " ".join(sys.argv[1:] if argv is None else map(str, argv))}
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = report_lines(result)
    args.result.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
