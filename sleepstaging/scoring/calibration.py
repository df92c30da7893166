"""Confidence that means what it says: temperature scaling, expected calibration error, reliability diagrams.

The blend's probabilities order the epochs a scorer checks first
(review_page.py), so their confidence should match their accuracy. One
temperature ``T`` is fitted on the validation rows' blended probabilities
(minimum negative log-likelihood of ``softmax(log p / T)``: T > 1 softens,
T < 1 sharpens) and recorded in the model set (``model_set.json``,
``calibration``); it changes no stage (the argmax is kept).

The expected calibration error (ECE) bins epochs by their largest
probability into :data:`ECE_BINS` equal-width bins over [0, 1] and averages
``|accuracy - mean confidence|`` over the bins, weighted by their share of
the epochs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)  # searched in log space
FLOOR = 1e-12  # probabilities of 0 (a hard blend) stay finite in log space


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


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per confidence bin: epochs, mean confidence, accuracy; and the ECE.

    Bin b holds the epochs whose largest probability lies in
    ``(b / bins, (b + 1) / bins]`` (the first bin includes 0).

    Returns
    -------
    dict
        ``ece`` (float), ``bins`` (int), ``count`` (list of int, length
        ``bins``), ``confidence`` and ``accuracy`` (lists of float, None for
        an empty bin), ``mean_confidence`` and ``accuracy_all`` (floats).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    confidence_sum = np.bincount(which, weights=confidence, minlength=bins)
    correct_sum = np.bincount(which, weights=correct, minlength=bins)
    filled = count > 0
    mean_confidence = np.where(filled, confidence_sum / np.maximum(count, 1), np.nan)
    accuracy = np.where(filled, correct_sum / np.maximum(count, 1), np.nan)
    ece = float(np.sum(count[filled] * np.abs(accuracy[filled] - mean_confidence[filled])) / max(len(p), 1))
    as_list = lambda values: [None if np.isnan(v) else float(v) for v in values]  # noqa: E731
    return {"ece": ece, "bins": bins, "count": count.tolist(), "confidence": as_list(mean_confidence),
            "accuracy": as_list(accuracy), "mean_confidence": float(confidence.mean()) if len(p) else None,
            "accuracy_all": float(correct.mean()) if len(p) else None}


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
    axis.set_xlabel("mean confidence (largest probability) per bin")
    axis.set_ylabel("accuracy per bin")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title(f"Reliability, {next(iter(curves.values()))['bins']} bins")
    axis.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with script_io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def recorded_temperature(record: dict | None) -> float:
    """The model set's calibration temperature (``model_set.json``'s ``calibration``), 1 without one."""
    if not record or not isinstance(record.get("calibration"), dict):
        return 1.0
    temperature = record["calibration"].get("temperature")
    return float(temperature) if isinstance(temperature, (int, float)) and temperature > 0 else 1.0


def calibration_record(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """What the model set records: the fitted temperature and the validation ECE before and after it."""
    temperature = fit_temperature(probabilities, labels)
    return {"temperature": temperature, "fitted_on": "validation rows' blended probabilities",
            "validation_ece_before": reliability(probabilities, labels)["ece"],
            "validation_ece_after": reliability(apply_temperature(probabilities, temperature), labels)["ece"],
            "ece_bins": ECE_BINS}


def evaluation_section(pred: Path, weights_dir: Path, y_true: np.ndarray, out: Path) -> list[str]:
    """evaluate.py's calibration section: ECE and a reliability diagram of the probabilities beside ``pred``.

    The blended probabilities (``.npy`` beside a blend CSV) before and after
    the model set's temperature; [] when ``pred`` has none beside it (a
    post-processed submission: the hmm and the rules keep the blend's
    probabilities, so the blend CSV's report shows them).
    """
    from sleepstaging.scoring import model_set
    from sleepstaging.output_names import probabilities_path

    path = probabilities_path(pred)
    if not path.is_file():
        return []
    probabilities = np.load(path, allow_pickle=False)
    if probabilities.shape != (len(y_true), 5):
        return []
    temperature = recorded_temperature(model_set.read_model_set(weights_dir))
    curves = {"blend": reliability(probabilities, y_true)}
    if temperature != 1.0:
        curves[f"blend, temperature {temperature:.2f}"] = reliability(apply_temperature(probabilities, temperature),
                                                                      y_true)
    plot_reliability(curves, out / "reliability.png")
    lines = ["## Calibration", "", f"Expected calibration error ({ECE_BINS} bins) of `{path.name}`: "
             + ", ".join(f"{label} {curve['ece']:.4f} (mean confidence {curve['mean_confidence']:.3f}, accuracy "
                         f"{curve['accuracy_all']:.3f})" for label, curve in curves.items()) + ".", "",
             "![reliability diagram](reliability.png)", ""]
    with open(out / "report.md", "a", encoding="utf-8") as handle:
        handle.write("\n" + "\n".join(lines))
    return lines
