"""bench/fit_check.py: a checkpoint's figures on rows, against counts by hand."""
from __future__ import annotations

import numpy as np
import torch

import fit_check
from sleepstaging.data import psg_layout
from tests.data.test_cache import write_recordings


class SaysN2(torch.nn.Module):
    """A model that gives every image the stage N2."""

    def forward(self, images):
        logits = torch.zeros(len(images), 5)
        logits[:, 2] = 10.0
        return logits


def test_scored_rows_give_the_macro_f1_and_accuracy_counted_by_hand(tmp_path):
    root = tmp_path / "root"
    table = write_recordings(root, {"R": [np.zeros((27, 48, 3), np.uint8)] * 10})  # labels 0..4 cycled
    rows = np.array([1, 2, 3, 7])  # true N1, N2, N3, N2
    line = fit_check.scored(SaysN2(), root, table, rows, {"img_size": [32, 32], "resize": "area"}, tmp_path / "c")
    # N2 said four times, right twice: N2's F1 = 2 * (2/4 * 2/2) / (2/4 + 2/2) = 2/3; N1 and N3 F1 0; Wake and REM
    # neither true nor said (sklearn's 0). Macro-F1 over the three stages present: (2/3) / 3 = 0.222.
    assert table.labels[rows].tolist() == [1, 2, 3, 2] and psg_layout.STAGES[2] == "N2"
    assert line == "macro-F1 0.222 accuracy 0.500 | F1 Wake N1 N2 N3 REM 0.000 0.000 0.667 0.000 0.000"
