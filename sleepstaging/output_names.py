"""The names of every file and folder the pipeline writes, in one place.

The names are the original's, so its README can be followed. Trainers write
into ``--weights-dir`` (``weights/``), for architecture ``A`` and fold ``k``:

- ``A_fold_k_<epoch>``: model weights after each epoch (no extension);
- ``A_fold_k_last.pt``: what ``--resume`` continues from;
- ``A_fold_k_config.json``: the run's resolved configuration;
- ``A_fold_k_log.csv``: validation metrics per epoch.

Inference, blending and post-processing write into ``--out`` (``outputs/``):

- ``A_fold_k_<epochs>.npy`` and ``A_fold_k_<epochs>_valid.npy``: per-model
  probability dumps (``<epochs>`` as Python prints a list: ``[4]``, ``[3, 4]``),
  with ``fold_k_valid.csv`` and ``infer_blend_fold_k.json``;
- ``filesblend_<method>_<vit-epochs>_<eff-epochs>.csv`` and its ``.npy``: the
  blend; ``blend_tune.json``: the tuned blend settings;
- ``files_post.csv``: the submission, with ``recordings/`` (per-recording
  outputs) beside it; ``report/``: evaluate.py's report.

This module imports nothing heavy (no torch), so every script and ``run.sh``
can ask it for a name.
"""
from __future__ import annotations

from pathlib import Path

TRAINING_LOG_GLOB = "*_log.csv"  # every trainer's log_path in a weights folder


# --------------------------------------------------------------------------
# Training (weights folder)
# --------------------------------------------------------------------------
def checkpoint_path(weights_dir: Path | str, arch: str, fold: int, epoch: int) -> Path:
    """``<weights_dir>/<arch>_fold_<fold>_<epoch>``, the original's checkpoint name (no extension)."""
    return Path(weights_dir) / f"{arch}_fold_{fold}_{epoch}"


def last_state_path(weights_dir: Path | str, arch: str, fold: int) -> Path:
    """``<weights_dir>/<arch>_fold_<fold>_last.pt``: what ``--resume`` continues from."""
    return Path(weights_dir) / f"{arch}_fold_{fold}_last.pt"


def run_config_path(weights_dir: Path | str, arch: str, fold: int) -> Path:
    """``<weights_dir>/<arch>_fold_<fold>_config.json``: the run's resolved configuration."""
    return Path(weights_dir) / f"{arch}_fold_{fold}_config.json"


def log_path(weights_dir: Path | str, arch: str, fold: int) -> Path:
    """``<weights_dir>/<arch>_fold_<fold>_log.csv``: validation metrics per epoch."""
    return Path(weights_dir) / f"{arch}_fold_{fold}_log.csv"


# --------------------------------------------------------------------------
# Inference and blending (outputs folder)
# --------------------------------------------------------------------------
def dump_path(out_dir: Path | str, arch: str, fold: int, epochs, split: str = "test") -> Path:
    """Path of one model's probability dump, named as the original named it.

    Parameters
    ----------
    out_dir : path-like
        The outputs folder.
    arch : str
        timm architecture name, e.g. ``vit_base_patch16_224``.
    fold : int
        Fold the model was trained on.
    epochs : sequence of int
        Checkpoint epochs averaged into the dump; written as Python prints a
        list (``[4]``, ``[3, 4]``).
    split : {"test", "valid"}
        ``valid`` adds the ``_valid`` suffix of the fold's validation rows.
    """
    suffix = {"test": "", "valid": "_valid"}[split]
    return Path(out_dir) / f"{arch}_fold_{fold}_{list(epochs)}{suffix}.npy"


def valid_csv_path(out_dir: Path | str, fold: int) -> Path:
    """``<out_dir>/fold_<k>_valid.csv``: ``ID,IDnum,label`` of the validation dumps' rows."""
    return Path(out_dir) / f"fold_{fold}_valid.csv"


def infer_config_path(out_dir: Path | str, fold: int) -> Path:
    """``<out_dir>/infer_blend_fold_<k>.json``: infer_blend.py's resolved configuration (its ``tta``)."""
    return Path(out_dir) / f"infer_blend_fold_{fold}.json"


def blend_csv_path(out_dir: Path | str, method: str, vit_epochs, eff_epochs) -> Path:
    """``<out_dir>/filesblend_<method>_<vit-epochs>_<eff-epochs>.csv``, the original's name."""
    return Path(out_dir) / f"filesblend_{method}_{list(vit_epochs)}_{list(eff_epochs)}.csv"


def probabilities_path(blend_csv: Path | str) -> Path:
    """The blended probabilities saved beside a blend CSV: same name, ``.npy``."""
    return Path(blend_csv).with_suffix(".npy")


def posterior_path(stage_file: Path | str) -> Path:
    """The hmm's posterior per epoch saved beside a post-processed stage file: ``<name>.posterior.npy``."""
    return Path(stage_file).with_suffix(".posterior.npy")


def tune_json_path(out_dir: Path | str) -> Path:
    """``<out_dir>/blend_tune.json``: the blend settings ``blend.py --tune`` found."""
    return Path(out_dir) / "blend_tune.json"


# --------------------------------------------------------------------------
# Submission and report
# --------------------------------------------------------------------------
def submission_path(out_dir: Path | str) -> Path:
    """``<out_dir>/files_post.csv``: the post-processed submission, the original's name."""
    return Path(out_dir) / "files_post.csv"


def recordings_dir(submission: Path | str) -> Path:
    """``recordings/`` beside the submission: postprocess.py's per-recording outputs."""
    return Path(submission).parent / "recordings"


def report_dir(out_dir: Path | str) -> Path:
    """``<out_dir>/report``: evaluate.py's report folder."""
    return Path(out_dir) / "report"


def model_set_path(weights_dir: Path | str) -> Path:
    """``<weights_dir>/model_set.json``: the record of a trained model set (model_set.py)."""
    return Path(weights_dir) / "model_set.json"
