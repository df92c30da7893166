"""Blending the two models' probability dumps: the original's methods and dump scales, the effective ViT
weight, the search of method x weight on validation, and the blend CSV with its probabilities (blend.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.output_names import blend_csv_path, dump_path, infer_config_path, probabilities_path
from sleepstaging.data.psg_layout import STAGES, NUM_CLASSES
from sleepstaging.script_io import InputError, where

METHODS = ("avg", "sqrt", "log1p", "square", "expm1", "rank")
DUMP_SCALES = ("original", "unit")
ORIGINAL_TTA = 1  # inferblend.py's CFG['tta'] for the submitted blend
ORIGINAL_WEIGHT_SUM = 4  # sum(CFG['weights']) with weights [1, 1, 1, 1]: each dump row scaled by 1/4 per tta
ORIGINAL_EFF_FOLD = 200  # the EfficientNet's 1000 outputs: 200 slices of 5 added, then divided by 200

TUNE_WEIGHTS = np.round(np.arange(101) * 0.01, 2)  # effective ViT weights 0.00, 0.01, ..., 1.00


# --------------------------------------------------------------------------
# Reading inputs
# --------------------------------------------------------------------------
def read_test_csv(data_root: Path | str) -> psg_layout.EpochTable:
    """Read ``<data_root>/testset-for_user.csv``, saying how to make it when missing."""
    path = Path(data_root) / psg_layout.TEST_CSV
    if not path.is_file():
        raise InputError(
            f"no test CSV {where(path)}; make a data set with make_synthetic.py (or render_edf.py "
            f"for EDF recordings), or point --data-root at one"
        )
    return psg_layout.read_epoch_csv(path, with_labels=False)


def load_probabilities(path: Path | str, rows: int, rows_source: str, how_to_make: str) -> np.ndarray:
    """Load and check a ``[rows, 5]`` probability array saved with ``np.save``.

    Parameters
    ----------
    path : path-like
        The ``.npy`` file.
    rows : int
        Expected row count.
    rows_source : str
        What ``rows`` comes from, for the error message (e.g. the test CSV).
    how_to_make : str
        Hint shown when the file is missing, e.g. ``"make it with infer_blend.py"``.

    Returns
    -------
    np.ndarray of float64, shape (rows, 5)

    Raises
    ------
    InputError
        Missing or unreadable file, object or non-float dtype, wrong shape,
        NaN/inf, values outside [0, 1], or a row that does not sum to 1
        (within 1e-3). Rows in messages are 1-based, like the lines of the
        CSV they belong to.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no probability file {where(path)}; {how_to_make}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"not a readable .npy array: {str(err).splitlines()[0]} {where(path)}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        dtype = getattr(array, "dtype", type(array).__name__)
        raise InputError(f"expected a float array, found dtype {dtype} {where(path)}")
    if array.ndim != 2 or array.shape[1] != NUM_CLASSES:
        raise InputError(f"expected shape (rows, {NUM_CLASSES}), found {array.shape} {where(path)}")
    if array.shape[0] != rows:
        raise InputError(f"has {array.shape[0]} rows, {rows_source} has {rows} {where(path)}")
    array = array.astype(np.float64)
    checks = (
        (~np.isfinite(array).all(axis=1), "NaN or inf"),
        (((array < 0) | (array > 1)).any(axis=1), "values outside [0, 1]"),
        (np.abs(array.sum(axis=1) - 1.0) > 1e-3, "a sum other than 1"),
    )
    for bad, what in checks:
        bad_rows = np.flatnonzero(bad)
        if bad_rows.size:
            raise InputError(f"{bad_rows.size} rows of probabilities have {what} {where(path, bad_rows[0] + 1)}")
    return array


# --------------------------------------------------------------------------
# Blending
# --------------------------------------------------------------------------
def check_blend_settings(method: str, weight: float, power: float) -> None:
    """Raise :class:`InputError` for an unknown method, w outside [0, 1] or power <= 0."""
    if method not in METHODS:
        raise InputError(f"unknown blend method {method!r} (expected one of {', '.join(METHODS)})")
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"blend weight must lie in [0, 1], got {weight}")
    if not power > 0:
        raise InputError(f"power must be > 0, got {power}")


def row_scales(dump_scale: str, tta: int = ORIGINAL_TTA) -> tuple[float, float]:
    """The factors the two models' unit-sum rows are multiplied by before blending.

    Parameters
    ----------
    dump_scale : {"original", "unit"}
        ``original``: the row sums of the original's dumps, 1/(4*tta) for
        model 1 (``weights[i] / sum(weights) / tta`` with four weights of 1)
        and 1/(800*tta) for model 2 (the same, then its 1000 outputs folded
        into 5 by adding 200 slices of 5 and dividing by 200). ``unit``: 1, 1.
    tta : int
        TTA rounds the dumps average (>= 1).

    Returns
    -------
    (float, float)
        Scale of model 1 (ViT), scale of model 2 (EfficientNet).
    """
    if dump_scale not in DUMP_SCALES:
        raise InputError(f"unknown dump scale {dump_scale!r} (expected one of {', '.join(DUMP_SCALES)})")
    if not (isinstance(tta, int) and tta >= 1):
        raise InputError(f"tta must be an integer of at least 1, got {tta!r}")
    if dump_scale == "unit":
        return 1.0, 1.0
    vit_scale = 1.0 / (ORIGINAL_WEIGHT_SUM * tta)
    return vit_scale, vit_scale / ORIGINAL_EFF_FOLD


def class_ranks(probabilities: np.ndarray) -> np.ndarray:
    """Per row, rank the classes 0 (least likely) .. 4 (most likely).

    A stable argsort of a stable argsort: tied classes are ranked in class
    order, the lower class index getting the lower rank (the original's numpy
    argsort gave the same order for 5 values).
    """
    order = np.argsort(probabilities, axis=1, kind="stable")
    return np.argsort(order, axis=1, kind="stable")


def transform_scores(probabilities: np.ndarray, method: str, power: float = 0.25, scale: float = 1.0) -> np.ndarray:
    """Apply a method's per-model transform (before the weighted sum) to ``scale * probabilities``.

    Parameters
    ----------
    probabilities : np.ndarray, shape (rows, 5)
    method : str
        One of :data:`METHODS`.
    power : float
        Exponent of ``square``.
    scale : float
        The model's row scale (see :func:`row_scales`), > 0.

    Returns
    -------
    np.ndarray of float64, shape (rows, 5)
    """
    transforms = {
        "avg": lambda p: p,
        "sqrt": np.sqrt,
        "log1p": np.log1p,
        "square": lambda p: p**power,
        "expm1": np.expm1,
        "rank": class_ranks,
    }
    return transforms[method](scale * np.asarray(probabilities, dtype=np.float64)).astype(np.float64)


def blend_scores(p1: np.ndarray, p2: np.ndarray, method: str = "sqrt", weight: float = 0.06,
                 power: float = 0.25, scales: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Blend two models' probabilities, each row first multiplied by its model's scale.

    Parameters
    ----------
    p1, p2 : np.ndarray, shape (rows, 5)
        Probabilities of model 1 (ViT) and model 2 (EfficientNet).
    method : str
        One of :data:`METHODS` (see the module docstring).
    weight : float
        Weight of model 1 in [0, 1]; model 2 gets ``1 - weight``. Ignored by
        ``rank``, which sums the two models' ranks.
    power : float
        Exponent of ``square``.
    scales : (float, float)
        Row scales of model 1 and model 2 (:func:`row_scales`); ``(1, 1)``
        blends the unit-sum rows as they are.

    Returns
    -------
    np.ndarray of float64, shape (rows, 5)
        Blended scores; the predicted stage is their argmax.
    """
    check_blend_settings(method, weight, power)
    t1, t2 = (transform_scores(p, method, power, scale) for p, scale in zip((p1, p2), scales))
    if method == "rank":
        return t1 + t2
    return weight * t1 + (1.0 - weight) * t2


def blend_probabilities(p1: np.ndarray, p2: np.ndarray, method: str = "sqrt", weight: float = 0.06,
                        power: float = 0.25, scales: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """The blend mapped back to the probability scale, rows summing to 1.

    The inverse of the method's transform undoes it (``sqrt`` -> square,
    ``log1p`` -> expm1, ``square`` -> power 1/power, ``expm1`` -> log1p), so
    the result is the weighted quasi-arithmetic mean of the two models'
    scaled rows (``scales[0] * p1``, ``scales[1] * p2``), then normalised per
    row; for ``avg``, ``sqrt`` and ``square`` that is the same mean of the
    unit-sum rows with the effective weight (:func:`effective_vit_weight`).
    The transforms are increasing,
    so the argmax is that of :func:`blend_scores`. ``rank`` has no inverse
    and its rank sums are no probabilities (the lowest-ranked class would get
    0, which the hmm reads as impossible): its probabilities are the plain
    mean of the two models' unit-sum rows (rank counts both models equally),
    whose argmax may differ from the rank blend's.
    This is what the hmm post-processing takes as class posteriors; the raw
    scores of ``sqrt`` or ``square`` are flattened posteriors, and dividing
    them by class priors would favour rare stages far too much.

    Returns
    -------
    np.ndarray of float64, shape (rows, 5)
    """
    inverses = {
        "avg": lambda s: s,
        "sqrt": np.square,
        "log1p": np.expm1,
        "square": lambda s: s ** (1.0 / power),
        "expm1": np.log1p,
    }
    if method == "rank":
        return (np.asarray(p1, dtype=np.float64) + np.asarray(p2, dtype=np.float64)) / 2.0
    probabilities = inverses[method](blend_scores(p1, p2, method, weight, power, scales))
    return probabilities / probabilities.sum(axis=1, keepdims=True)


def effective_vit_weight(method: str, weight: float, power: float = 0.25,
                         scales: tuple[float, float] = (1.0, 1.0)) -> float | None:
    """Model 1's weight w' that gives the same blend on the unit-sum rows.

    ``avg``, ``sqrt`` and ``square`` are homogeneous of degree k (1, 1/2,
    ``power``): f(c*x) = c**k * f(x), so w*f(a*p1) + (1-w)*f(b*p2) is
    proportional to w'*f(p1) + (1-w')*f(p2) with
    w' = w*a**k / (w*a**k + (1-w)*b**k). ``rank`` ignores weights and
    scales: 0.5. With equal scales every method keeps w. ``log1p`` and
    ``expm1`` with unequal scales have no such w' (None): their ViT share
    depends on the probabilities.

    Parameters
    ----------
    method, weight, power
        As for :func:`blend_scores`.
    scales : (float, float)
        Row scales (a, b) of model 1 and model 2.

    Returns
    -------
    float or None
    """
    if method == "rank":
        return 0.5
    vit_scale, eff_scale = scales
    if vit_scale == eff_scale:
        return float(weight)
    degree = _homogeneity_degree(method, power)
    if degree is None:
        return None
    vit_part, eff_part = weight * vit_scale**degree, (1.0 - weight) * eff_scale**degree
    return float(vit_part / (vit_part + eff_part))


def _homogeneity_degree(method: str, power: float) -> float | None:
    """k with f(c*x) = c**k * f(x) for the method's transform f; None for log1p and expm1 (no such k)."""
    return {"avg": 1.0, "sqrt": 0.5, "square": power}.get(method)


def raw_weight(method: str, effective: float, power: float = 0.25,
               scales: tuple[float, float] = (1.0, 1.0)) -> float:
    """The weight w of the scaled rows that gives model 1 the effective weight w' (:func:`effective_vit_weight`).

    With degree k (``avg`` 1, ``sqrt`` 1/2, ``square`` ``power``) and row
    scales (a, b): w = w'*b**k / (w'*b**k + (1-w')*a**k). ``log1p`` and
    ``expm1`` have no w'; they get ``avg``'s w (both are near ``avg`` for
    probabilities of at most 1/4). With equal scales, and for ``rank``, w = w'.

    Returns
    -------
    float in [0, 1]
    """
    vit_scale, eff_scale = scales
    if method == "rank" or vit_scale == eff_scale:
        return float(effective)
    degree = _homogeneity_degree(method, power)
    if degree is None:  # log1p, expm1: avg's grid
        degree = _homogeneity_degree("avg", power)
    vit_part, eff_part = effective * eff_scale**degree, (1.0 - effective) * vit_scale**degree
    return float(vit_part / (vit_part + eff_part))


def describe_effective_weight(method: str, weight: float, power: float, scales: tuple[float, float]) -> str:
    """One line saying the blend's effective ViT weight on unit-sum dumps, or why there is none."""
    effective = effective_vit_weight(method, weight, power, scales)
    if method == "rank":
        return "effective ViT weight on unit-sum dumps: 0.5 (rank counts both models equally)"
    if effective is None:
        return (f"effective ViT weight on unit-sum dumps: none ({method}(c*x) is not a power of c times {method}(x), "
                f"so the row scales do not factor out; roughly avg's "
                f"{effective_vit_weight('avg', weight, power, scales):.3f})")
    return f"effective ViT weight on unit-sum dumps: {effective:.3f} (w = {weight}, row scales {scales[0]:.6g}, " \
           f"{scales[1]:.6g})"


def predict_stages(scores: np.ndarray) -> np.ndarray:
    """Stage ints (Wake=0 ... REM=4) as the argmax of each row, first class on ties."""
    return np.argmax(scores, axis=1)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-averaged F1, the challenge metric, as scikit-learn computes it.

    Averaged over the classes present in ``y_true`` or ``y_pred``
    (scikit-learn's default label set); a class never predicted but present
    scores 0. Computed from a bincount: ``--tune`` scores up to 506 blends
    of up to ~140k rows, where ``sklearn.metrics.f1_score`` takes about 60x as
    long (132 ms against 2 ms a call on 120k rows); elsewhere the project
    uses scikit-learn's, and tests/test_blend.py checks the two agree.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    confusion = np.bincount(y_true * NUM_CLASSES + y_pred, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)
    true_positives = np.diag(confusion)
    denominators = confusion.sum(axis=0) + confusion.sum(axis=1)  # 2tp + fp + fn
    present = denominators > 0
    return float(np.mean(2.0 * true_positives[present] / denominators[present]))


def tune_blend(p1: np.ndarray, p2: np.ndarray, labels: np.ndarray, power: float = 0.25,
               quiet: bool = True, scales: tuple[float, float] = (1.0, 1.0)) -> dict:
    """Search method x weight for the best validation macro-F1.

    Effective ViT weights run over 0.00, 0.01, ..., 1.00, each turned into
    the weight of the scaled rows by :func:`raw_weight` (``rank`` ignores
    the weight and is scored once). Ties go to the earlier method in
    :data:`METHODS`, then to the lower weight.

    Parameters
    ----------
    p1, p2 : np.ndarray, shape (rows, 5)
        Validation probabilities of model 1 and model 2.
    labels : np.ndarray of int, shape (rows,)
        True stages of those rows.
    power : float
        Exponent of ``square``.
    quiet : bool
        No progress bar.
    scales : (float, float)
        Row scales of the two models (:func:`row_scales`): the weights found
        are weights of the scaled rows.

    Returns
    -------
    dict
        ``method``, ``ens_weight`` (w of the scaled rows), ``power``,
        ``val_macro_f1`` of the best setting; ``per_method``: for each
        method its best ``ens_weight`` and ``val_macro_f1``; ``curves``: for
        each method the macro-F1 at every grid point (one value for ``rank``).
    """
    per_method, curves = {}, {}
    for method in tqdm(METHODS, desc="tune", disable=quiet):
        t1, t2 = (transform_scores(p, method, power, scale) for p, scale in zip((p1, p2), scales))
        if method == "rank":  # ignores the weight; 0.5 records that both models count equally
            weights = [0.5]
            scores = [macro_f1(labels, predict_stages(t1 + t2))]
        else:
            weights = [raw_weight(method, effective, power, scales) for effective in TUNE_WEIGHTS]
            scores = [macro_f1(labels, predict_stages(w * t1 + (1.0 - w) * t2)) for w in weights]
        best = int(np.argmax(scores))
        per_method[method] = {"ens_weight": weights[best], "val_macro_f1": scores[best]}
        curves[method] = scores
    best_method = max(METHODS, key=lambda m: (per_method[m]["val_macro_f1"], -METHODS.index(m)))
    return {
        "method": best_method,
        "ens_weight": per_method[best_method]["ens_weight"],
        "power": power,
        "val_macro_f1": per_method[best_method]["val_macro_f1"],
        "per_method": per_method,
        "curves": curves,
    }


def format_tune_table(result: dict) -> str:
    """The tuning table: per method its best weight w, best macro-F1, and F1 at w' = 0, 0.1, ..., 1."""
    shown = list(range(0, 101, 10))
    lines = ["method    best_w  val_F1 | F1 at w' = " + " ".join(f"{w / 100:.1f}".rjust(5) for w in shown)]
    for method in METHODS:
        best, curve = result["per_method"][method], result["curves"][method]
        weight = "-" if method == "rank" else f"{best['ens_weight']:.3g}"
        values = [curve[0]] * len(shown) if len(curve) == 1 else [curve[i] for i in shown]
        lines.append(f"{method:<7} {weight:>8}  {best['val_macro_f1']:.4f} | "
                     + " ".join(f"{v:.3f}".rjust(5) for v in values))
    return "\n".join(lines)


def read_tune_json(path: Path | str) -> dict:
    """Read ``method``, ``ens_weight``, ``power``, ``dump_scale`` and ``tta`` from a blend_tune.json.

    A file without ``dump_scale`` predates dump scales: it was tuned on the
    unit-sum dumps, so it reads as ``unit`` (and ``tta`` as 1, unused there).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no tuning file {where(path)}; make it with blend.py --tune")
    try:
        tuned = json.loads(path.read_text())
        settings = {"method": str(tuned["method"]), "ens_weight": float(tuned["ens_weight"]),
                    "power": float(tuned["power"]), "dump_scale": str(tuned.get("dump_scale", "unit")),
                    "tta": tuned.get("tta", ORIGINAL_TTA)}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputError(f"not a blend_tune.json with method, ens_weight and power ({type(err).__name__}: "
                         f"{err}) {where(path)}") from None
    try:  # a bad value is named with the file it came from
        check_blend_settings(settings["method"], settings["ens_weight"], settings["power"])
        row_scales(settings["dump_scale"], settings["tta"])
    except InputError as err:
        raise InputError(f"{err} {where(path)}") from None
    return settings


def stage_counts(stages: np.ndarray) -> str:
    """``Wake 12, N1 3, ...``: how often each stage occurs."""
    return ", ".join(f"{name} {count}" for name, count in zip(STAGES, np.bincount(stages, minlength=NUM_CLASSES)))


def resolve_tta(tta: int | None, out: Path | str, fold: int, given_by: str = "--tta") -> tuple[int, str]:
    """The TTA rounds of the dumps, and where that number came from.

    ``tta`` when given (by ``given_by``); otherwise infer_blend.py's ``--tta`` from
    ``<out>/infer_blend_fold_<fold>.json`` (written beside the dumps); 1,
    the original's, when that file is absent.

    Raises
    ------
    InputError
        A ``tta`` below 1, or an unreadable configuration file.
    """
    if tta is not None:
        row_scales("original", tta)
        return tta, given_by
    path = infer_config_path(out, fold)
    if not path.is_file():
        return ORIGINAL_TTA, f"the original's (no {path})"
    try:
        found = json.loads(path.read_text())["tta"]
        row_scales("original", found)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, InputError) as err:
        raise InputError(f"no usable tta in infer_blend.py's configuration ({type(err).__name__}: {err}); "
                         f"pass --tta {where(path)}") from None
    return found, str(path)


# --------------------------------------------------------------------------
DUMP_HINT = "make it with infer_blend.py, or point --out at the folder that has it"


def blend_test_dumps(out: Path | str, data_root: Path | str, fold: int, vit: tuple[str, list], eff: tuple[str, list],
                     method: str, weight: float, power: float, scales: tuple[float, float], config: dict) -> Path:
    """Blend both models' test dumps; write the blend CSV, its probabilities and ``config``; return the CSV's path.

    Parameters
    ----------
    out : path-like
        The folder with the dumps (``infer_blend.py``'s), where the blend is written.
    data_root : path-like
        The data root whose test CSV gives the rows.
    fold : int
        The fold the models were trained on (in the dumps' names).
    vit, eff : (str, list of int)
        Each model's architecture and kept epochs.
    method, weight, power : str, float, float
        The blend (:func:`blend_scores`).
    scales : (float, float)
        The dumps' row scales (:func:`row_scales`).
    config : dict
        Saved beside the CSV as JSON.
    """
    out = Path(out)
    test = read_test_csv(data_root)
    p1, p2 = (load_probabilities(dump_path(out, arch, fold, epochs), len(test), str(test.path), DUMP_HINT)
              for arch, epochs in (vit, eff))
    settings = (method, weight, power, scales)
    stages = predict_stages(blend_scores(p1, p2, *settings))
    probabilities = blend_probabilities(p1, p2, *settings)

    blend_csv = blend_csv_path(out, method, vit[1], eff[1])
    with script_io.atomic_path(probabilities_path(blend_csv)) as tmp:
        np.save(tmp, probabilities.astype(np.float32), allow_pickle=False)
    script_io.write_lines(blend_csv, (STAGES[s] for s in stages))
    with script_io.atomic_path(blend_csv.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(config, indent=2))
    print(describe_effective_weight(*settings))
    print(f"predicted stages: {stage_counts(stages)}")
    print(f"{blend_csv} is saved ({len(stages)} rows), blended probabilities in {probabilities_path(blend_csv)}")
    return blend_csv
