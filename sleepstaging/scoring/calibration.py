"""Confidence that means what it says: temperature scaling, expected calibration error, reliability diagrams.

The blend's probabilities are the confidence the review page, the
hypnogram tables and the cohort index show (review_page.py), and the
hmm's posterior (``hmm.hmm_posterior``) the probability of the stage the
default scoring assigns; both should match their accuracy. Temperatures
``T`` are fitted on the validation rows (minimum negative log-likelihood of
``softmax(log p / T)``: T > 1 softens, T < 1 sharpens) and recorded in the
model set (``model_set.json``, ``calibration``): ``temperature`` for the
blend; for the hmm's posterior one per stage the hmm assigns
(``hmm_stage_temperatures``, :func:`fit_stage_temperatures`: each fitted on
the validation rows the hmm assigned that stage, and an epoch's posterior
is scaled by the temperature of its assigned stage), and
``hmm_temperature``, one over all rows (what model sets recorded before
the stage temperatures, and the fallback of a stage too rarely assigned).
A temperature changes no row's argmax.

Why one per stage assigned: the hmm divides the blend by the stage shares
the models were trained on and, at a small transition weight, its
transitions are nearly uniform, so its posterior lacks the stages'
frequencies: the frequent stage (N2) is given far less than its accuracy
and REM more. One temperature cannot fix both directions at once; a
temperature per stage assigned calibrates the quantity the ECE bins and the
review page orders by, the posterior of the stage assigned.

The expected calibration error (ECE) bins epochs by the probability given
to the stage assigned (the largest, for the blend) into :data:`ECE_BINS`
equal-width bins over [0, 1] and averages ``|accuracy - mean confidence|``
over the bins, weighted by their share of the epochs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)  # searched in log space
FLOOR = 1e-12  # probabilities of 0 (a hard blend) stay finite in log space
# A stage the hmm assigns to fewer validation rows than this keeps the temperature fitted over all rows:
# a few dozen epochs (of one or two nights) move a temperature fitted on them by more than it corrects.
MIN_STAGE_ROWS = 50


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` per row, shape (n, k) as given; ``T == 1`` returns the rows renormalised."""
    p = np.asarray(probabilities, dtype=np.float64)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = np.log(np.clip(p, FLOOR, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean ``-log p[label]`` over the rows (nats)."""
    p = np.asarray(probabilities, dtype=np.float64)
    return float(-np.log(np.clip(p[np.arange(len(p)), np.asarray(labels)], FLOOR, None)).mean())


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the validation rows' negative log-likelihood.

    Parameters
    ----------
    probabilities : np.ndarray, shape (n, k)
        Validation rows' blended probabilities.
    labels : np.ndarray of int, shape (n,)
        Their true stages.
    """
    from scipy.optimize import minimize_scalar

    if len(probabilities) == 0:
        raise ValueError("no validation rows to fit a temperature on")
    low, high = np.log(TEMPERATURE_RANGE)
    result = minimize_scalar(lambda log_t: negative_log_likelihood(apply_temperature(probabilities, np.exp(log_t)),
                                                                   labels),
                             bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def fit_stage_temperatures(posterior: np.ndarray, assigned: np.ndarray, labels: np.ndarray,
                           fallback: float, min_rows: int = MIN_STAGE_ROWS) -> list[float]:
    """One temperature per stage assigned: :func:`fit_temperature` of the rows assigned that stage.

    Parameters
    ----------
    posterior : np.ndarray, shape (n, k)
        The validation rows' hmm posterior.
    assigned : np.ndarray of int, shape (n,)
        The stage the hmm assigned each row (its Viterbi path).
    labels : np.ndarray of int, shape (n,)
        Their true stages.
    fallback : float
        The temperature of a stage assigned to fewer than ``min_rows`` rows.
    min_rows : int

    Returns
    -------
    list of float, length k
        Stage s's temperature at index s.
    """
    posterior, assigned, labels = np.asarray(posterior), np.asarray(assigned), np.asarray(labels)
    temperatures = []
    for stage in range(posterior.shape[1]):
        rows = assigned == stage
        temperatures.append(fit_temperature(posterior[rows], labels[rows]) if rows.sum() >= min_rows
                            else float(fallback))
    return temperatures


def apply_stage_temperatures(posterior: np.ndarray, assigned: np.ndarray, temperatures) -> np.ndarray:
    """Each row (shape (n, k)) scaled by the temperature of its ``assigned`` stage (n,): :func:`apply_temperature`
    per row, ``temperatures[assigned[i]]`` for row i (k temperatures). Equal temperatures: one temperature."""
    posterior = np.asarray(posterior, dtype=np.float64)
    assigned = np.asarray(assigned)
    scaled = np.empty_like(posterior)
    for stage, temperature in enumerate(temperatures):
        rows = assigned == stage
        if rows.any():
            scaled[rows] = apply_temperature(posterior[rows], temperature)
    return scaled


def reliability_of(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per confidence bin: epochs, mean confidence, accuracy; and the ECE.

    Bin b holds the epochs whose confidence lies in ``(b / bins, (b + 1) /
    bins]`` (the first bin includes 0).

    Parameters
    ----------
    confidence : np.ndarray of float, shape (n,)
        The probability given to the stage assigned, in [0, 1].
    correct : np.ndarray of bool, shape (n,)
        Whether the stage assigned is the true one.

    Returns
    -------
    dict
        ``ece`` (float), ``bins`` (int), ``count`` (list of int, length
        ``bins``), ``confidence`` and ``accuracy`` (lists of float, None for
        an empty bin), ``mean_confidence`` and ``accuracy_all`` (floats).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    confidence_sum = np.bincount(which, weights=confidence, minlength=bins)
    correct_sum = np.bincount(which, weights=correct, minlength=bins)
    filled = count > 0
    mean_confidence = np.where(filled, confidence_sum / np.maximum(count, 1), np.nan)
    accuracy = np.where(filled, correct_sum / np.maximum(count, 1), np.nan)
    n = len(confidence)
    ece = float(np.sum(count[filled] * np.abs(accuracy[filled] - mean_confidence[filled])) / max(n, 1))
    as_list = lambda values: [None if np.isnan(v) else float(v) for v in values]  # noqa: E731
    return {"ece": ece, "bins": bins, "count": count.tolist(), "confidence": as_list(mean_confidence),
            "accuracy": as_list(accuracy), "mean_confidence": float(confidence.mean()) if n else None,
            "accuracy_all": float(correct.mean()) if n else None}


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """:func:`reliability_of` the largest probability of each row (shape (n, k)), the stage being its argmax."""
    p = np.asarray(probabilities, dtype=np.float64)
    return reliability_of(p.max(axis=1), p.argmax(axis=1) == np.asarray(labels), bins)


def assigned_reliability(probabilities: np.ndarray, assigned: np.ndarray, labels: np.ndarray,
                         bins: int = ECE_BINS) -> dict:
    """:func:`reliability_of` the probability each row (shape (n, k)) gives the stage ``assigned`` (n,), such as
    the hmm's posterior of the stage its Viterbi path assigns."""
    p = np.asarray(probabilities, dtype=np.float64)
    assigned = np.asarray(assigned)
    return reliability_of(p[np.arange(len(p)), assigned], assigned == np.asarray(labels), bins)


def plot_reliability(curves: dict, path: Path) -> None:
    """A reliability diagram (accuracy against mean confidence per bin) of one or more :func:`reliability` results.

    ``curves``: label -> :func:`reliability`'s dict; the label gets its ECE.
    """
    from matplotlib.figure import Figure

    from sleepstaging import script_io
    fig = Figure(figsize=(5, 5))
    axis = fig.subplots()
    axis.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for (label, curve), marker in zip(curves.items(), "osd^v"):
        shown = [(c, a) for c, a in zip(curve["confidence"], curve["accuracy"]) if c is not None]
        axis.plot(*zip(*shown), marker=marker, label=f"{label} (ECE {curve['ece']:.3f})")
    axis.set_xlabel("mean confidence per bin (probability of the stage assigned)")
    axis.set_ylabel("accuracy per bin")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title(f"Reliability, {next(iter(curves.values()))['bins']} bins")
    axis.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with script_io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def recorded_temperature(record: dict | None, key: str = "temperature") -> float:
    """A calibration temperature of the model set (``model_set.json``'s ``calibration``: ``temperature`` for the
    blend, ``hmm_temperature`` for the hmm's posterior), 1 without one."""
    if not record or not isinstance(record.get("calibration"), dict):
        return 1.0
    temperature = record["calibration"].get(key)
    return float(temperature) if isinstance(temperature, (int, float)) and temperature > 0 else 1.0


def is_temperature_list(value, stages: int) -> bool:
    """Whether ``value`` is ``stages`` finite positive numbers: what ``hmm_stage_temperatures`` must be."""
    return (isinstance(value, list) and len(value) == stages
            and all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < float("inf") for t in value))


def recorded_hmm_temperatures(record: dict | None, stages: int = 5) -> tuple[list[float], str]:
    """The temperatures of the hmm's posterior per stage assigned, from a model set record, and what they are.

    ``hmm_stage_temperatures`` when the record has them; a record written
    before them (``hmm_temperature`` only) gives its one temperature to
    every stage, as it was applied then; none: 1 (the posterior as computed).
    The second value says which, in one line, for the JSON beside the output.
    """
    calibration = record.get("calibration") if record else None
    stage_temperatures = calibration.get("hmm_stage_temperatures") if isinstance(calibration, dict) else None
    if is_temperature_list(stage_temperatures, stages):
        return [float(t) for t in stage_temperatures], "hmm_stage_temperatures: one per stage assigned"
    temperature = recorded_temperature(record, "hmm_temperature")
    if temperature != 1.0:
        return [temperature] * stages, ("hmm_temperature for every stage: the model set records no "
                                        "hmm_stage_temperatures (written before them)")
    return [1.0] * stages, "1: the model set records none"


def calibration_record(probabilities: np.ndarray, labels: np.ndarray, posterior: np.ndarray,
                       decoded: np.ndarray) -> dict:
    """What the model set records: the temperatures fitted on the validation rows and their ECE before and after.

    Parameters
    ----------
    probabilities : np.ndarray, shape (n, 5)
        The validation rows' blended probabilities.
    labels : np.ndarray of int, shape (n,)
    posterior : np.ndarray, shape (n, 5)
        The hmm's posterior of the same rows (``hmm.hmm_posterior``, the
        model set's hmm and transition weight).
    decoded : np.ndarray of int, shape (n,)
        The stages its Viterbi path assigns: the hmm's ECE is of its
        posterior of these, and its stage temperatures are fitted per
        stage assigned (:func:`fit_stage_temperatures`).
    """
    temperature = fit_temperature(probabilities, labels)
    hmm_temperature = fit_temperature(posterior, labels)
    stage_temperatures = fit_stage_temperatures(posterior, decoded, labels, hmm_temperature)
    hmm_ece = lambda scaled: assigned_reliability(scaled, decoded, labels)["ece"]  # noqa: E731
    return {"temperature": temperature, "fitted_on": "validation rows' blended probabilities",
            "validation_ece_before": reliability(probabilities, labels)["ece"],
            "validation_ece_after": reliability(apply_temperature(probabilities, temperature), labels)["ece"],
            "hmm_temperature": hmm_temperature,
            "hmm_fitted_on": "the hmm's posterior of the validation rows (model set's hmm and transition weight)",
            "hmm_stage_temperatures": stage_temperatures,
            "hmm_stage_fitted_on": f"per stage (Wake, N1, N2, N3, REM), the validation rows the hmm assigned it; "
                                   f"hmm_temperature for a stage assigned to fewer than {MIN_STAGE_ROWS} rows",
            "hmm_stage_rows": np.bincount(np.asarray(decoded), minlength=posterior.shape[1]).tolist(),
            "validation_hmm_ece_before": hmm_ece(posterior),
            "validation_hmm_ece_after_one_temperature": hmm_ece(apply_temperature(posterior, hmm_temperature)),
            "validation_hmm_ece_after": hmm_ece(apply_stage_temperatures(posterior, decoded, stage_temperatures)),
            "ece_bins": ECE_BINS}


def _rows_beside(path: Path, rows: int) -> np.ndarray | None:
    """The (rows, 5) array saved at ``path``; None when absent or of another shape."""
    if not path.is_file():
        return None
    values = np.load(path, allow_pickle=False)
    return values if values.shape == (rows, 5) else None


def posterior_calibration_said(pred: Path) -> str:
    """How postprocess.py calibrated the posterior beside ``pred``: ``hmm_sources``' ``posterior_temperature``
    in its configuration ``<pred>.json``; a line saying it is unknown without one."""
    import json

    config_path = Path(pred).with_suffix(".json")
    try:
        said = json.loads(config_path.read_text())["hmm_sources"]["posterior_temperature"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"not recorded ({config_path.name} has no hmm_sources' posterior_temperature)"
    return str(said)


def evaluation_section(pred: Path, record: dict | None, y_true: np.ndarray, y_pred: np.ndarray,
                       out: Path) -> tuple[list[str], dict]:
    """evaluate.py's calibration section: ECE and a reliability diagram of the probabilities beside ``pred``.

    A blend CSV (``<pred>.npy`` beside it): the blended probabilities before
    and after the temperature of the model set ``record``
    (``model_set.read_model_set``; None: none). A stage file post-processed by
    the hmm (``<pred>.posterior.npy``, postprocess.py): the hmm's posterior
    of the stage it assigned (``y_pred``), as written (calibrated by the
    model set's temperatures when the hmm was wholly the model set's; the
    report says how, from ``hmm_sources`` in ``<pred>.json``).
    Writes ``out/reliability.png``; returns the report's lines and, per
    curve, ``ece``, ``mean_confidence`` and ``accuracy`` for metrics.json;
    ``([], {})`` when ``pred`` has neither beside it (the rules keep the
    blend's probabilities: the blend CSV's report shows them).
    """
    from sleepstaging.output_names import posterior_path, probabilities_path

    curves, sources = {}, []
    blended = _rows_beside(probabilities_path(pred), len(y_true))
    if blended is not None:
        temperature = recorded_temperature(record)
        curves["blend"] = reliability(blended, y_true)
        if temperature != 1.0:
            curves[f"blend, temperature {temperature:.2f}"] = reliability(apply_temperature(blended, temperature),
                                                                          y_true)
        sources.append(probabilities_path(pred).name)
    posterior = _rows_beside(posterior_path(pred), len(y_true))
    how = []
    if posterior is not None:
        curves["hmm posterior of the stage assigned"] = assigned_reliability(posterior, y_pred, y_true)
        sources.append(posterior_path(pred).name)
        how = [f"The hmm's posterior as postprocess.py calibrated it: {posterior_calibration_said(pred)}.", ""]
    if not curves:
        return [], {}
    plot_reliability(curves, out / "reliability.png")
    lines = ["## Calibration", "", f"Expected calibration error ({ECE_BINS} bins) of "
             + " and ".join(f"`{name}`" for name in sources) + ": "
             + ", ".join(f"{label} {curve['ece']:.4f} (mean confidence {curve['mean_confidence']:.3f}, accuracy "
                         f"{curve['accuracy_all']:.3f})" for label, curve in curves.items()) + ".", "", *how,
             "![reliability diagram](reliability.png)", ""]
    summary = {label: {"ece": curve["ece"], "mean_confidence": curve["mean_confidence"],
                       "accuracy": curve["accuracy_all"]} for label, curve in curves.items()}
    return lines, summary
