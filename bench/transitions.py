"""Where a stage goes when it is left, and how long it lasts, from 5 x 5 transition counts (NumPy only).

Shared by ``hmm_context.py`` (the project's venv) and ``hypnogram_structure.py``
(YASA's venv): rows and columns Wake, N1, N2, N3, REM; ``counts[i, j]`` the
30-s epochs of stage i followed by stage j.
"""
from __future__ import annotations

import numpy as np

# changes real nights make in at least this share of a stage's exits (Metzner's counts) must occur
EXIT_FLOOR = 0.02


def change_shares(counts: np.ndarray) -> np.ndarray:
    """Where each stage goes when it is left: ``counts`` without the diagonal, rows normalised, shape (5, 5)."""
    changes = np.array(counts, dtype=float)
    np.fill_diagonal(changes, 0.0)
    return changes / changes.sum(axis=1, keepdims=True)


def chain_mean_bouts(counts: np.ndarray) -> np.ndarray:
    """Mean bout (epochs) of each stage in a Markov chain of transition ``counts``: epochs over exits, shape (5,)."""
    epochs = np.asarray(counts, dtype=float).sum(axis=1)
    return epochs / (epochs - np.diag(counts))
