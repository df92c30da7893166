"""Hardening: the bad-input catalogue, through the real scripts as subprocesses.

Every refusal is checked against the error contract (docs/errors-and-validation.md): exit status 2,
exactly one line on stderr that starts with ``error:`` and names the file
(``(file:row)`` where there is a row), no traceback, and no file created or
changed anywhere in the case's work folder (data, weights and outputs are
snapshotted, bytes and modification times, before and after).

The light scripts (blend.py, postprocess.py) read the same CSV reader as
the trainers, so the CSV, .npy and settings cases run through them. The
cases that need images, checkpoints or training run through main_vit_rgb.py,
main_eff.py and infer_blend.py. Each case is its own process running the
real script file as ``__main__`` with its own arguments, stdout, stderr and
exit status, forked from a launcher that imported the modules once
(conftest.run_scripts_warm: a cold start of a trainer costs about 8 s of
CPU); one case is also run cold, to show that both give the same status and
the same bytes on stdout and stderr, and the header-row case runs cold.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sleepstaging.training import engine
from sleepstaging.scoring import models
from sleepstaging.data import psg_layout
from sleepstaging import recipe
from sleepstaging import script_io
from sleepstaging.output_names import dump_path
from conftest import REPO, copy_subset, run_script, run_scripts_warm, write_random_checkpoints

VIT, EFF, IMG = "test_vit", "test_efficientnet", 32
SPLIT = {"folds": 2, "seed": 72, "cv": "subject"}
BLEND_CSV = "filesblend_sqrt_[4]_[1].csv"
VIT_DUMP = "vit_base_patch16_224_fold_0_[4].npy"
EFF_DUMP = "tf_efficientnet_b4_ns_fold_0_[1].npy"


# --------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------
class Trap:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_trap_would_be_seen(tmp_path):
    """The pickle traps below can fail: loading one with pickle allowed creates its marker."""
    marker = tmp_path / "unpickled"
    np.save(tmp_path / "trap.npy", np.array([Trap(marker)], dtype=object), allow_pickle=True)
    np.load(tmp_path / "trap.npy", allow_pickle=True)
    assert marker.exists()
    marker.unlink()
    torch.save({"x": Trap(marker)}, tmp_path / "trap.pt")
    torch.load(tmp_path / "trap.pt", weights_only=False)
    assert marker.exists()


def snapshot(root: Path) -> dict:
    """Every file, folder and link under ``root``: kind, size, mtime and content hash."""
    state = {}
    for folder, folders, files in os.walk(root, followlinks=False):
        for name in folders + files:
            path = Path(folder) / name
            key = path.relative_to(root).as_posix()
            if path.is_symlink():
                state[key] = ("link", os.readlink(path))
            elif path.is_dir():
                state[key] = ("dir",)
            else:
                info = path.stat()
                state[key] = (info.st_size, info.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def check_refused(result, root: Path, before: dict, where: str | None, *fragments: str) -> str:
    """Assert the bad-input contract; return the error line."""
    output = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 2, f"exit status {result.returncode}\n{output}"
    assert "Traceback" not in result.stdout + result.stderr, output
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), output
    line = result.stderr[:-1]
    assert line.startswith("error: "), output
    if where is not None:
        assert where in line, f"{where!r} not in {line!r}"
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    after = snapshot(root)
    changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
    # The image cache (image_cache, built from the images before training or inference) may keep the
    # recordings it finished before the bad input stopped the run: each array beside its manifest, valid
    # for the next run. Nothing half-made (a temporary file, an array without its manifest) may stay.
    cached = [key for key in changed if key.split("/")[0] == "cache" and key not in before]
    files = {key for key in cached if after[key][0] != "dir"}
    for key in files:
        assert not key.rsplit("/", 1)[-1].startswith("."), f"temporary file left in the cache: {key}"
        stem, _, suffix = key.rpartition(".")
        assert f"{stem}.{'json' if suffix == 'npy' else 'npy'}" in files, f"half-built cache entry: {key}"
    changed = [key for key in changed if key not in cached]
    assert not changed, f"files created or changed: {changed}"
    return line


# --------------------------------------------------------------------------
# CSV, .npy and settings, through blend.py and postprocess.py
# --------------------------------------------------------------------------
TEST_ROWS = "R1,R1_0001.png\nR1,R1_0002.png\nR1,R1_0003.png\nR2,R2_0001.png\nR2,R2_0002.png\n"
TRAIN_STAGES = ["Wake", "N1", "N2", "N2", "N3", "N3", "N2", "REM", "REM", "N2"]


def train_rows_text() -> str:
    return "".join(f"{rec},{rec}_{n + 1:04d}.png,{stage}\n"
                   for rec in ("T1", "T2") for n, stage in enumerate(TRAIN_STAGES))


@pytest.fixture(scope="module")
def light_base(tmp_path_factory):
    """A work folder after a good blend and hmm post-processing: DATA/ CSVs, outputs/ dumps and results."""
    ws = tmp_path_factory.mktemp("light")
    data, out = ws / "DATA", ws / "outputs"
    data.mkdir()
    (data / psg_layout.TEST_CSV).write_text(TEST_ROWS)
    (data / psg_layout.TRAIN_CSV).write_text(train_rows_text())
    out.mkdir()
    rng = np.random.default_rng(0)
    np.save(out / VIT_DUMP, rng.dirichlet(np.ones(5), 5).astype(np.float32))
    np.save(out / EFF_DUMP, rng.dirichlet(np.ones(5), 5).astype(np.float32))
    for args in blend_args(ws), post_args(ws):
        run_script(*args)
    assert len((out / "files_post.csv").read_text().splitlines()) == 5
    return ws


def blend_args(ws):
    return ["blend.py", "--data-root", ws / "DATA", "--out", ws / "outputs", "--quiet"]


def post_args(ws, method="hmm"):
    return ["postprocess.py", "--data-root", ws / "DATA", "--in", ws / "outputs" / BLEND_CSV,
            "--out", ws / "outputs" / "files_post.csv", "--method", method, "--quiet"]


def csv_of_test(ws):
    return ws / "DATA" / psg_layout.TEST_CSV


def csv_of_train(ws):
    return ws / "DATA" / psg_layout.TRAIN_CSV


def replace_line(path: Path, row: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[row - 1] = text
    path.write_text("\n".join(lines) + "\n")


def save_trap(path: Path, marker: Path, raw: bool = False) -> None:
    if raw:  # a bare pickle under a .npy name
        path.write_bytes(pickle.dumps(np.array([Trap(marker)] * 5, dtype=object)))
    else:  # a real .npy of dtype object: its payload is a pickle
        np.save(path, np.array([[Trap(marker)] * 5] * 5, dtype=object), allow_pickle=True)


def probabilities_with(value, row: int) -> np.ndarray:
    p = np.full((5, 5), 0.2, dtype=np.float32)
    p[row - 1, 2] = value
    return p


# (id, mutate(ws, marker), script arguments(ws), where(ws) or None, fragments)
LIGHT_CASES = [
    ("test CSV missing", lambda ws, m: csv_of_test(ws).unlink(), blend_args,
     lambda ws: f"({csv_of_test(ws)})", ["no test CSV", "make_synthetic.py"]),
    ("test CSV empty", lambda ws, m: csv_of_test(ws).write_text(""), blend_args,
     lambda ws: f"({csv_of_test(ws)})", ["has no rows"]),
    ("empty test set (header only), blend", lambda ws, m: csv_of_test(ws).write_text("ID,IDnum\n"), blend_args,
     lambda ws: f"({csv_of_test(ws)})", ["has no rows"]),
    ("empty test set (header only), postprocess", lambda ws, m: csv_of_test(ws).write_text("ID,IDnum\n"), post_args,
     lambda ws: f"({csv_of_test(ws)})", ["has no rows"]),
    ("test CSV row with 3 columns", lambda ws, m: replace_line(csv_of_test(ws), 3, "R1,R1_0003.png,N2"), blend_args,
     lambda ws: f"({csv_of_test(ws)}:3)", ["expected 2 columns", "found 3"]),
    ("IDnum ../x.png", lambda ws, m: replace_line(csv_of_test(ws), 2, "R1,../x.png"), blend_args,
     lambda ws: f"({csv_of_test(ws)}:2)", ["plain names inside the data root", "'../x.png'"]),
    ("absolute ID", lambda ws, m: replace_line(csv_of_test(ws), 4, "/etc,R2_0001.png"), blend_args,
     lambda ws: f"({csv_of_test(ws)}:4)", ["plain names inside the data root", "'/etc'"]),
    ("IDnum listed twice", lambda ws, m: replace_line(csv_of_test(ws), 5, "R1,R1_0002.png"), blend_args,
     lambda ws: f"({csv_of_test(ws)}:5)", ["IDnum listed twice", "'R1_0002.png' at row 5"]),
    ("garbage bytes", lambda ws, m: csv_of_test(ws).write_bytes(b"R1,R1_0001.png\n\xff\xfe\x00\x81\x9c,\x00\n"),
     blend_args, lambda ws: f"({csv_of_test(ws)})", ["not a readable CSV"]),
    ("training labels that are not stages, all listed",
     lambda ws, m: [replace_line(csv_of_train(ws), row, f"T1,T1_{row:04d}.png,{label}")
                    for row, label in ((2, "N4"), (5, "Sleep stage 4"), (7, ""))], post_args,
     lambda ws: f"({csv_of_train(ws)}:2)", ["'N4' at row 2", "'Sleep stage 4' at row 5", "'' at row 7"]),
    ("training row with 2 columns", lambda ws, m: replace_line(csv_of_train(ws), 12, "T2,T2_0002.png"), post_args,
     lambda ws: f"({csv_of_train(ws)}:12)", ["expected 3 columns", "found 2"]),
    ("training IDnum listed twice", lambda ws, m: replace_line(csv_of_train(ws), 20, "T2,T2_0003.png,N2"), post_args,
     lambda ws: f"({csv_of_train(ws)}:20)", ["IDnum listed twice"]),
    ("training CSV missing for hmm", lambda ws, m: csv_of_train(ws).unlink(), post_args,
     lambda ws: f"({csv_of_train(ws)})", ["no training CSV"]),
    (".npy with a row too few", lambda ws, m: np.save(ws / "outputs" / EFF_DUMP, np.full((4, 5), 0.2, np.float32)),
     blend_args, lambda ws: f"({ws / 'outputs' / EFF_DUMP})", ["has 4 rows, ", f"{psg_layout.TEST_CSV} has 5"]),
    (".npy with inf", lambda ws, m: np.save(ws / "outputs" / VIT_DUMP, probabilities_with(np.inf, 2)), blend_args,
     lambda ws: f"({ws / 'outputs' / VIT_DUMP}:2)", ["NaN or inf"]),
    (".npy of dtype object (a pickle inside)", lambda ws, m: save_trap(ws / "outputs" / VIT_DUMP, m), blend_args,
     lambda ws: f"({ws / 'outputs' / VIT_DUMP})", ["Object arrays cannot be loaded"]),
    (".npy that is a bare pickle", lambda ws, m: save_trap(ws / "outputs" / EFF_DUMP, m, raw=True), blend_args,
     lambda ws: f"({ws / 'outputs' / EFF_DUMP})", ["not a readable .npy"]),
    (".npy with 3 dimensions", lambda ws, m: np.save(ws / "outputs" / EFF_DUMP, np.full((5, 5, 1), 0.2)),
     blend_args, lambda ws: f"({ws / 'outputs' / EFF_DUMP})", ["expected shape (rows, 5), found (5, 5, 1)"]),
    ("hmm probabilities with NaN",
     lambda ws, m: np.save(ws / "outputs" / "filesblend_sqrt_[4]_[1].npy", probabilities_with(np.nan, 4)),
     post_args, lambda ws: f"({ws / 'outputs' / 'filesblend_sqrt_[4]_[1].npy'}:4)", ["NaN or inf"]),
    ("hmm probabilities with 4 classes",
     lambda ws, m: np.save(ws / "outputs" / "filesblend_sqrt_[4]_[1].npy", np.full((5, 4), 0.25)),
     post_args, lambda ws: f"({ws / 'outputs' / 'filesblend_sqrt_[4]_[1].npy'})", ["found (5, 4)"]),
    ("hmm probabilities of dtype object", lambda ws, m: save_trap(ws / "outputs" / "filesblend_sqrt_[4]_[1].npy", m),
     post_args, lambda ws: f"({ws / 'outputs' / 'filesblend_sqrt_[4]_[1].npy'})", ["Object arrays"]),
    ("unknown blend method", lambda ws, m: None, lambda ws: blend_args(ws) + ["--method", "median"],
     None, ["unknown blend method 'median'"]),
    ("blend weight below 0", lambda ws, m: None, lambda ws: blend_args(ws) + ["--ens-weight", "-0.5"],
     None, ["blend weight must lie in [0, 1], got -0.5"]),
    ("blend weight NaN", lambda ws, m: None, lambda ws: blend_args(ws) + ["--ens-weight", "nan"],
     None, ["blend weight must lie in [0, 1], got nan"]),
    ("blend weight outside [0, 1] in a tuning file",
     lambda ws, m: (ws / "tune.json").write_text(json.dumps({"method": "sqrt", "ens_weight": 1.5, "power": 0.25})),
     lambda ws: blend_args(ws) + ["--from-tune", ws / "tune.json"],
     lambda ws: f"({ws / 'tune.json'})", ["blend weight must lie in [0, 1], got 1.5"]),
    ("unknown blend method in a tuning file",
     lambda ws, m: (ws / "tune.json").write_text(json.dumps({"method": "vote", "ens_weight": 0.5, "power": 0.25})),
     lambda ws: blend_args(ws) + ["--from-tune", ws / "tune.json"],
     lambda ws: f"({ws / 'tune.json'})", ["unknown blend method 'vote'"]),
    ("unknown post-processing method", lambda ws, m: None, lambda ws: post_args(ws, "smooth"),
     None, ["unknown post-processing method 'smooth'"]),
]


@pytest.fixture(scope="module")
def light_results(light_base, tmp_path_factory):
    """Every light case in its own copy of the base folder, each run in its own process (forked from one
    launcher that imported blend and postprocess once); id -> (result, work folder, snapshot, marker)."""
    base = tmp_path_factory.mktemp("light_cases")
    prepared = {}
    for number, (case, mutate, arguments, _, _) in enumerate(LIGHT_CASES):
        ws, marker = base / f"case_{number}", base / f"unpickled_{number}"
        shutil.copytree(light_base, ws, symlinks=True)
        mutate(ws, marker)
        prepared[case] = (ws, marker, arguments(ws))
    before = {case: snapshot(ws) for case, (ws, _, _) in prepared.items()}
    requests = [(arguments[0], arguments[1:], None, ws) for ws, _, arguments in prepared.values()]
    results = run_scripts_warm(requests, base / "captured", preload=("blend", "postprocess"))
    return {case: (result, ws, before[case], marker)
            for (case, (ws, marker, _)), result in zip(prepared.items(), results)}


@pytest.mark.slow
@pytest.mark.parametrize("case, where, fragments", [(c[0], c[3], c[4]) for c in LIGHT_CASES],
                         ids=[c[0] for c in LIGHT_CASES])
def test_bad_csv_npy_and_settings_are_refused(light_results, case, where, fragments):
    result, ws, before, marker = light_results[case]
    check_refused(result, ws, before, where(ws) if where else None, *fragments)
    assert not marker.exists()


@pytest.mark.slow
def test_a_header_row_is_accepted_and_skipped(light_base, tmp_path):
    """Header rows in both CSVs: the same blend and the same hmm submission as without them."""
    ws = tmp_path / "ws"
    shutil.copytree(light_base, ws)
    csv_of_test(ws).write_text("ID,IDnum\n" + TEST_ROWS)
    csv_of_train(ws).write_text("ID,IDnum,label\n" + train_rows_text())
    for name in (BLEND_CSV, "files_post.csv"):
        (ws / "outputs" / name).unlink()
    run_script(*blend_args(ws))
    run_script(*post_args(ws))
    for name in (BLEND_CSV, "files_post.csv"):
        assert (ws / "outputs" / name).read_bytes() == (light_base / "outputs" / name).read_bytes()


# --------------------------------------------------------------------------
# Images, checkpoints and training, through the trainers and infer_blend.py
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_data(tiny_data, tmp_path_factory):
    """4 training recordings of 12 rows and 1 test recording of 12 rows, copied from the tiny set."""
    return copy_subset(tiny_data, tmp_path_factory.mktemp("small") / "DATA", train_recordings=4, train_rows=12)


@pytest.fixture(scope="module")
def small_weights(small_data, tmp_path_factory):
    """Epoch-0 checkpoints of both tiny models (random weights) with their training configurations."""
    return write_random_checkpoints(small_data, tmp_path_factory.mktemp("small_weights"), (VIT, EFF), (0,), IMG, SPLIT)


def train_args(ws, script="main_vit_rgb.py", arch=VIT, workers=0):
    return [script, "--data-root", ws / "DATA", "--weights-dir", ws / "weights", "--model-arch", arch,
            "--img-size", IMG, "--epochs", 1, "--folds", 2, "--batch-size", 8, "--valid-batch-size", 16,
            "--workers", workers, "--device", "cpu", "--pretrained", "none", "--quiet"]


def infer_args(ws, vit_epoch=0, workers=0, out="outputs"):
    return ["infer_blend.py", "--data-root", ws / "DATA", "--weights-dir", ws / "weights", "--out", ws / out,
            "--vit-arch", VIT, "--eff-arch", EFF, "--vit-epochs", vit_epoch, "--eff-epochs", 0,
            "--workers", workers, "--batch-size", 16, "--device", "cpu", "--quiet"]


def image_of_row(ws, csv_name, row):
    """The image path of 1-based ``row`` of a CSV in the work folder's data root."""
    table = psg_layout.read_epoch_csv(ws / "DATA" / csv_name, with_labels=csv_name == psg_layout.TRAIN_CSV)
    return psg_layout.image_path(ws / "DATA", table.recording_ids[row - 1], table.idnums[row - 1])


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def damage(path: Path) -> None:
    """Zero 64 bytes in the middle of the file (inside the image data: a CRC error)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(data))


def missing_and_outside(ws, marker):
    """Two images of one recording deleted, one recording folder gone, one image a link out of the root."""
    train = psg_layout.read_epoch_csv(ws / "DATA" / psg_layout.TRAIN_CSV, with_labels=True)
    recordings = sorted(set(train.recording_ids))
    image_of_row(ws, psg_layout.TRAIN_CSV, 3).unlink()
    image_of_row(ws, psg_layout.TRAIN_CSV, 7).unlink()
    shutil.rmtree(ws / "DATA" / recordings[2])
    linked = image_of_row(ws, psg_layout.TRAIN_CSV, 40)
    outside = ws / "outside.png"
    shutil.copy(linked, outside)
    linked.unlink()
    linked.symlink_to(outside)


def other_architecture(ws, marker):
    shutil.copy(engine.checkpoint_path(ws / "weights", EFF, 0, 0), engine.checkpoint_path(ws / "weights", VIT, 0, 1))


def other_class_count(ws, marker):
    torch.manual_seed(5)
    models.save_weights(models.create_model(VIT, (IMG, IMG), num_classes=3), engine.checkpoint_path(ws / "weights", VIT, 0, 1))


def pickled_checkpoint(ws, marker):
    torch.save({"state_dict": Trap(marker)}, engine.checkpoint_path(ws / "weights", VIT, 0, 1))


def pickled_pretrained(ws, marker):
    torch.save({"state_dict": Trap(marker)}, ws / "pretrained.pth")


def grey_and_resized(ws, marker):
    """Test row 1 as a one-channel PNG, row 2 at twice the size: both must be accepted."""
    first, second = image_of_row(ws, psg_layout.TEST_CSV, 1), image_of_row(ws, psg_layout.TEST_CSV, 2)
    shutil.copy(first, ws / "original_1.png")
    shutil.copy(second, ws / "original_2.png")
    colour = cv2.imread(str(first), cv2.IMREAD_UNCHANGED)
    assert colour.ndim == 3 and (colour[..., 0] == colour[..., 2]).all()  # the renderer draws grey in RGB
    cv2.imwrite(str(first), colour[..., 0])
    assert cv2.imread(str(first), cv2.IMREAD_UNCHANGED).ndim == 2
    big = cv2.resize(cv2.imread(str(second)), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(second), big)


# id -> (mutate(ws, marker), script arguments(ws)); each in its own copy of the data and weights
HEAVY_CASES = {
    "data root missing": (lambda ws, m: shutil.rmtree(ws / "DATA"),
                          lambda ws: train_args(ws, "main_eff.py", EFF)),
    "images missing or outside": (missing_and_outside, train_args),
    "truncated training PNG": (lambda ws, m: truncate(image_of_row(ws, psg_layout.TRAIN_CSV, 30)),
                               lambda ws: train_args(ws, workers=1)),
    "truncated training PNG, per-sample path": (lambda ws, m: truncate(image_of_row(ws, psg_layout.TRAIN_CSV, 30)),
                                                lambda ws: train_args(ws, workers=1) + ["--no-cache"]),
    "pickled pretrained file": (pickled_pretrained,
                                lambda ws: train_args(ws) + ["--pretrained", ws / "pretrained.pth"]),
    "test images missing": (lambda ws, m: [image_of_row(ws, psg_layout.TEST_CSV, r).unlink() for r in (2, 9)],
                            infer_args),
    "damaged test PNG": (lambda ws, m: damage(image_of_row(ws, psg_layout.TEST_CSV, 5)),
                         lambda ws: infer_args(ws, workers=1)),
    "checkpoint of another architecture": (other_architecture, lambda ws: infer_args(ws, 1)),
    "checkpoint of another class count": (other_class_count, lambda ws: infer_args(ws, 1)),
    "pickled checkpoint": (pickled_checkpoint, lambda ws: infer_args(ws, 1)),
    "grey and resized images, run 1": (grey_and_resized, lambda ws: infer_args(ws, out="outputs_1")),
    "grey and resized images, run 2": (None, lambda ws: infer_args(ws, out="outputs_2")),
}


@pytest.fixture(scope="module")
def heavy(small_data, small_weights, tmp_path_factory):
    """Run every heavy case, each its own process (conftest.run_scripts_warm, 3 at a time).

    Returns id -> (result, work folder, snapshot before, pickle-trap marker).
    """
    base = tmp_path_factory.mktemp("heavy")
    prepared = {}
    for number, (case, (mutate, arguments)) in enumerate(HEAVY_CASES.items()):
        ws = base / f"case_{number}"
        if mutate is None:  # shares the previous case's folder
            prepared[case] = (prepared[previous][0], arguments)
            continue
        shutil.copytree(small_data, ws / "DATA")
        shutil.copytree(small_weights, ws / "weights")
        (ws / "outputs").mkdir()
        for arch in (VIT, EFF):  # outputs of an earlier run, which a refused run must leave alone
            for split in ("test", "valid"):
                np.save(dump_path(ws / "outputs", arch, 0, [0], split), np.full((2, 5), 0.2, dtype=np.float32))
        mutate(ws, base / f"unpickled_{number}")
        prepared[case] = (ws, arguments)
        previous = case
    before = {case: snapshot(ws) for case, (ws, _) in prepared.items()}
    # run from the work folder: relative defaults (an image cache, say) land where the snapshot sees them
    requests = [(arguments(ws)[0], arguments(ws)[1:], None, ws) for ws, arguments in prepared.values()]
    results = dict(zip(prepared, run_scripts_warm(requests, base / "captured")))
    markers = {case: base / f"unpickled_{number}" for number, case in enumerate(HEAVY_CASES)}
    return {case: (results[case], prepared[case][0], before[case], markers[case]) for case in HEAVY_CASES}


@pytest.mark.slow
def test_missing_data_root_names_it(heavy):
    result, ws, before, _ = heavy["data root missing"]
    check_refused(result, ws, before, f"({ws / 'DATA'})", "data root not found", "make_synthetic.py")
    # the warm launcher behaves as a plain `python main_eff.py ...`: same status, same bytes on stderr
    arguments = HEAVY_CASES["data root missing"][1](ws)
    cold = subprocess.run([sys.executable, str(REPO / arguments[0]), *map(str, arguments[1:])], cwd=ws,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
    assert (cold.returncode, cold.stderr, cold.stdout) == (result.returncode, result.stderr, result.stdout)


@pytest.mark.slow
def test_every_missing_or_outside_image_is_listed_before_training(heavy):
    result, ws, before, _ = heavy["images missing or outside"]
    train = psg_layout.read_epoch_csv(ws / "DATA" / psg_layout.TRAIN_CSV, with_labels=True)
    gone = sorted(set(train.recording_ids))[2]

    def name(row):
        return f"{train.recording_ids[row - 1]}/{train.idnums[row - 1]} (row {row})"

    line = check_refused(result, ws, before, f"({ws / 'DATA' / psg_layout.TRAIN_CSV})",
                         f"folder {gone}/ missing (12 images)", f"2 image(s) missing: {name(3)}, {name(7)}",
                         f"1 image(s) outside the data root: {name(40)}")
    assert result.stdout == ""  # found before anything else happened: not even the configuration printed
    assert line.count("(row ") == 3


@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated training PNG", "truncated training PNG, per-sample path"])
def test_a_truncated_training_png_is_named_and_nothing_is_written(heavy, case):
    result, ws, before, _ = heavy[case]
    image = image_of_row(ws, psg_layout.TRAIN_CSV, 30)
    # found while the image cache is built (in a builder process), or with --no-cache in epoch 0 by a
    # DataLoader worker: either way the old run's files in weights/ are untouched
    check_refused(result, ws, before, f"({image})", "not a decodable image")
    assert "epoch 0" not in result.stdout


@pytest.mark.slow
def test_a_pickled_pretrained_file_is_refused_unexecuted(heavy):
    result, ws, before, marker = heavy["pickled pretrained file"]
    check_refused(result, ws, before, f"({ws / 'pretrained.pth'})", "cannot use pretrained weights")
    assert not marker.exists()
    assert not (ws / "cache").exists()  # refused before the image cache was built


@pytest.mark.slow
def test_missing_test_images_are_listed_before_inference(heavy):
    result, ws, before, _ = heavy["test images missing"]
    test = psg_layout.read_epoch_csv(ws / "DATA" / psg_layout.TEST_CSV, with_labels=False)
    check_refused(result, ws, before, f"({ws / 'DATA' / psg_layout.TEST_CSV})",
                  f"2 image(s) missing: {test.recording_ids[1]}/{test.idnums[1]} (row 2), "
                  f"{test.recording_ids[8]}/{test.idnums[8]} (row 9)")
    assert "validation rows" not in result.stdout  # refused before any model was built


@pytest.mark.slow
def test_a_damaged_test_png_is_named(heavy):
    result, ws, before, _ = heavy["damaged test PNG"]
    check_refused(result, ws, before, f"({image_of_row(ws, psg_layout.TEST_CSV, 5)})", "not a decodable image")


@pytest.mark.slow
@pytest.mark.parametrize("case, fragments", [
    ("checkpoint of another architecture", ["does not fit the model", "it holds test_efficientnet",
                                            "the model is test_vit with 5 classes"]),
    ("checkpoint of another class count", ["does not fit the model", "test_vit with 3 classes"]),
    ("pickled checkpoint", ["not a safetensors checkpoint", "refused"]),
])
def test_wrong_checkpoints_are_refused(heavy, case, fragments):
    result, ws, before, marker = heavy[case]
    check_refused(result, ws, before, f"({engine.checkpoint_path(ws / 'weights', VIT, 0, 1)})", *fragments)
    assert not marker.exists()


def by_hand(weights, arch, image_path) -> np.ndarray:
    """Softmax of one checkpoint on one image read as RGB, resized and normalised without the project's loader."""
    model = models.load_weights(models.create_model(arch, (IMG, IMG)), engine.checkpoint_path(weights, arch, 0, 0))
    image = cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (IMG, IMG), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    image = (image - np.array(recipe.IMAGENET_MEAN)) / np.array(recipe.IMAGENET_STD)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32)))
    return torch.softmax(logits, dim=1)[0].numpy()


@pytest.mark.slow
def test_grey_and_resized_images_are_converted_and_inference_is_repeatable(heavy):
    runs = [heavy[f"grey and resized images, run {n}"] for n in (1, 2)]
    for result, *_ in runs:
        assert result.returncode == 0, result.stderr[-3000:]
    ws = runs[0][1]
    test = np.load(dump_path(ws / "outputs_1", VIT, 0, [0]))
    assert test.shape == (12, 5)
    # The grey file is read as three equal channels: exactly the prediction of the RGB original.
    np.testing.assert_allclose(test[0], by_hand(ws / "weights", VIT, ws / "original_1.png"), atol=2e-5)
    assert np.abs(test[1] - test[0]).max() > 1e-3  # images are told apart far beyond that tolerance
    # The double-size file is resized to the model's input like any other.
    np.testing.assert_allclose(test[1], by_hand(ws / "weights", VIT, image_of_row(ws, psg_layout.TEST_CSV, 2)),
                               atol=2e-5)
    eff = np.load(dump_path(ws / "outputs_1", EFF, 0, [0]))
    np.testing.assert_allclose(eff[0], by_hand(ws / "weights", EFF, ws / "original_1.png"), atol=2e-5)
    # The same checkpoints and data give the same bytes, run after run.
    names = sorted(p.name for p in (ws / "outputs_1").iterdir() if p.suffix in (".npy", ".csv"))
    assert len(names) == 5  # four dumps and fold_0_valid.csv
    for name in names:
        assert (ws / "outputs_1" / name).read_bytes() == (ws / "outputs_2" / name).read_bytes(), name


# --------------------------------------------------------------------------
# A file system that refuses: one line, exit 2, as for bad input
# --------------------------------------------------------------------------
def test_describe_os_error_names_the_files():
    assert script_io.describe_os_error(PermissionError(13, "Permission denied", "/a/b")) == "Permission denied (/a/b)"
    assert script_io.describe_os_error(OSError(18, "Invalid cross-device link", "/a", None, "/b")) == \
        "Invalid cross-device link (/a -> /b)"
    assert script_io.describe_os_error(OSError(28, "No space left on device")) == "No space left on device"


@pytest.mark.slow
@pytest.mark.parametrize("script, args", [
    ("make_synthetic.py", ["--train-subjects", 1, "--test-subjects", 1, "--hours", 0.1, "--out"]),
    ("render_edf.py", ["--edf", "{edf}", "--montage", "synthetic", "--split", "train", "--quiet", "--out"]),
])
def test_an_output_folder_that_cannot_be_made_is_one_line(tiny_data, script, args):
    # Nothing can be made under /proc, not even by root.
    target = "/proc/psg-no-such-folder/DATA"
    args = [str(arg).format(edf=tiny_data / "edf") for arg in args] + [target]
    result = run_script(script, *args, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: No such file or directory (/proc/psg-no-such-folder)"
