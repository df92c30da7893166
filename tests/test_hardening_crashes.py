"""Hardening: crashes. SIGKILL mid-epoch then --resume, writers killed mid-way, reproducibility.

- A trainer killed with SIGKILL in the middle of its second epoch, run again
  with ``--resume``, ends with the same bytes (weights, training state, log
  metrics) as a run never interrupted; its first epoch, a fresh run with the
  same seed and data, is the same bytes too. A ``_last.pt`` that is a
  pickle with a payload is refused and never executed.
- A trainer killed while it builds its image cache leaves a half-built
  cache; the next run detects it, rebuilds it (the same bytes as a cache
  built in one go) and trains to the same weights (it is the reference
  uninterrupted run of the resume test).
- A writer killed in the middle of writing through ``script_io.atomic_path``
  leaves the old file whole; the temporary file it leaves is hidden from the
  pipeline's globs. Every write in the pipeline's code goes through
  ``atomic_path`` (checked on the source).
"""
from __future__ import annotations

import ast
import csv
import glob
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sleepstaging.training import engine
from sleepstaging.scoring import models
from sleepstaging.data import psg_layout
from sleepstaging import script_io
from conftest import REPO, copy_subset

VIT, IMG = "test_vit", 32


def train_command(data, weights_dir, workers, *extra):
    """The trainer's command line; run it from a folder of its own (relative defaults such as a cache land there)."""
    return [sys.executable, str(REPO / "main_vit_rgb.py"), "--data-root", str(data), "--weights-dir", str(weights_dir),
            "--model-arch", VIT, "--img-size", str(IMG), "--epochs", "2", "--folds", "2", "--batch-size", "4",
            "--valid-batch-size", "16", "--workers", str(workers), "--device", "cpu", "--pretrained", "none", "--quiet",
            *extra]


ENV = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")


class Trap:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def files_state(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in folder.iterdir()}


def log_rows(path: Path) -> list[dict]:
    """The log's rows without the throughput column (a wall-clock figure)."""
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k != "train_images_per_s"} for row in csv.DictReader(handle)]


def cache_files(cache: Path) -> list[str]:
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a process started in a session of its own, and whatever it started (DataLoader workers)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """The training runs of this module, 2 epochs each on one data set (4 recordings of 40 epochs), each
    from a folder of its own (where its default image cache goes):

    C: SIGKILLed in epoch 1, then resumed with --resume (1 DataLoader worker).
    K: SIGKILLed while it builds its image cache (--cache-dir cache_K), then started again: that run
       trains both epochs uninterrupted (no DataLoader worker), the reference for C.
    D: a resume from a copy of C's folder whose _last.pt is a pickle trap.
    """
    base = tmp_path_factory.mktemp("crash")
    data = copy_subset(tiny_data, base / "DATA", train_recordings=4, train_rows=40)
    for name in ("C", "D", "K"):
        (base / f"cwd_{name}").mkdir()
    k_cache = base / "cache_K"
    k_command = train_command(data, base / "K", 0, "--cache-dir", k_cache)
    stderr_files = {name: open(base / f"{name}.stderr", "w") for name in ("C", "K")}
    killed = subprocess.Popen(train_command(data, base / "C", 1), stdout=subprocess.DEVNULL,
                              stderr=stderr_files["C"], env=ENV, start_new_session=True, cwd=base / "cwd_C")
    building = subprocess.Popen(k_command, stdout=subprocess.DEVNULL, stderr=stderr_files["K"], env=ENV,
                                start_new_session=True, cwd=base / "cwd_K")
    log = engine.log_path(base / "C", VIT, 0)
    epoch_1_seen = uninterrupted = None
    try:
        deadline = time.monotonic() + 400
        while killed.returncode is None or building.returncode is None:
            for name, process in (("C", killed), ("K", building)):
                assert process.returncode is not None or process.poll() is None, \
                    f"{name} ended before it was killed: see {base / name}.stderr"
            assert time.monotonic() < deadline, "the trainers stalled"
            if building.returncode is None and cache_files(k_cache):  # the first recording is being cached
                kill_group(building)
                k_after_kill = cache_files(k_cache)
                uninterrupted = subprocess.Popen(k_command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                 text=True, env=ENV, cwd=base / "cwd_K")
            if killed.returncode is None and epoch_1_seen is None and log.exists():
                # the log is the last thing an epoch writes: from now on the trainer is in epoch 1
                epoch_1_seen = time.monotonic()
            if killed.returncode is None and epoch_1_seen and time.monotonic() > epoch_1_seen + 0.05:
                # 80 training and 80 validation images take about a second: this is well inside the epoch
                killed_during = sorted(p.name for p in (base / "C").iterdir())
                os.kill(killed.pid, signal.SIGKILL)
                kill_group(killed)  # and its orphaned DataLoader worker
            time.sleep(0.005)
    finally:
        for process in (killed, building):
            if process.returncode is None:
                kill_group(process)
        for handle in stderr_files.values():
            handle.close()
    after_kill = sorted(p.name for p in (base / "C").iterdir())

    # D: C's folder with its training state replaced by a pickle whose unpickling makes a file
    trapped = base / "D"
    trapped.mkdir()
    for path in (base / "C").iterdir():
        (trapped / path.name).write_bytes(path.read_bytes())
    marker = base / "unpickled"
    torch.save({"epoch": 0, "optimizer": Trap(marker)}, engine.last_state_path(trapped, VIT, 0))
    trapped_before = files_state(trapped)
    resumed = subprocess.Popen(train_command(data, base / "C", 1, "--resume"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV, cwd=base / "cwd_C")
    refused = subprocess.run(train_command(data, trapped, 0, "--resume"), capture_output=True, text=True, env=ENV,
                             cwd=base / "cwd_D")
    outputs = {name: process.communicate() + (process.returncode,)
               for name, process in (("K started again", uninterrupted), ("C resumed", resumed))}
    for name, (stdout, stderr, status) in outputs.items():
        assert status == 0, f"{name} exited {status}\n{stdout[-2000:]}\n{stderr[-2000:]}"
    return dict(base=base, killed_status=killed.returncode, killed_during=killed_during, after_kill=after_kill,
                resumed_stdout=outputs["C resumed"][0], refused=refused, trapped=trapped,
                trapped_before=trapped_before, marker=marker, k_cache=k_cache, k_after_kill=k_after_kill,
                k_status=building.returncode)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_bytes(runs):
    base = runs["base"]
    assert runs["killed_status"] == -signal.SIGKILL
    names = [f"{VIT}_fold_0_0", f"{VIT}_fold_0_config.json", f"{VIT}_fold_0_last.pt", f"{VIT}_fold_0_log.csv"]
    # killed in epoch 1: epoch 0's files whole, nothing of epoch 1, no temporary file left
    assert runs["killed_during"] == names and runs["after_kill"] == names
    assert "resuming after epoch 0" in runs["resumed_stdout"]
    for name in (f"{VIT}_fold_0_0", f"{VIT}_fold_0_1", f"{VIT}_fold_0_last.pt"):
        assert (base / "K" / name).read_bytes() == (base / "C" / name).read_bytes(), name
    assert log_rows(base / "K" / f"{VIT}_fold_0_log.csv") == log_rows(base / "C" / f"{VIT}_fold_0_log.csv")
    # the comparison has teeth: training changed the weights between the two epochs
    assert (base / "K" / f"{VIT}_fold_0_0").read_bytes() != (base / "K" / f"{VIT}_fold_0_1").read_bytes()


@pytest.mark.slow
def test_the_same_seed_and_data_give_the_same_checkpoint_bytes(runs):
    """Epoch 0 of C and of K: two fresh runs (1 and 0 DataLoader workers), one seed, one data set."""
    base = runs["base"]
    first, second = (base / run / f"{VIT}_fold_0_0" for run in ("C", "K"))
    assert first.read_bytes() == second.read_bytes()
    loaded = [models.load_weights(models.create_model(VIT, (IMG, IMG)), path).state_dict() for path in (first, second)]
    for name, value in loaded[0].items():
        assert torch.equal(value, loaded[1][name]), name


@pytest.mark.slow
def test_a_pickled_training_state_is_refused_and_never_executed(runs):
    refused, trapped = runs["refused"], runs["trapped"]
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: unreadable training state")
    assert f"({engine.last_state_path(trapped, VIT, 0)})" in refused.stderr
    assert not runs["marker"].exists()
    assert files_state(trapped) == runs["trapped_before"]


# --------------------------------------------------------------------------
# Writers killed mid-way
# --------------------------------------------------------------------------
WRITER = """
import os, sys, time
from sleepstaging import script_io
def lines():
    for number in range(400_000):
        if number == 200_000 and os.environ.get("PAUSE"):
            print("half", flush=True)  # half the lines are in the temporary file
            time.sleep(120)
        yield f"N2 line {{number}}"

script_io.write_lines(sys.argv[1], lines())
"""


@pytest.mark.slow
def test_a_writer_killed_midway_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "test_vit_fold_0_log.csv"  # a file evaluate.py finds by globbing
    old = "epoch,lr\n0,0.0001\n"
    target.write_text(old)
    script = WRITER.format(repo=str(REPO))
    writer = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True,
                              env=dict(ENV, PAUSE="1"))
    try:
        assert writer.stdout.readline() == "half\n"
        temporary = [p for p in tmp_path.iterdir() if p != target]
        assert len(temporary) == 1 and temporary[0].stat().st_size > 1_000_000  # really mid-way
        assert target.read_text() == old
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert target.read_text() == old
    # the torn temporary file is hidden (a dot file) and is not what the pipeline looks for
    leftover = [p.name for p in tmp_path.iterdir() if p != target]
    assert len(leftover) == 1 and leftover[0].startswith(".test_vit_fold_0_log.")
    assert leftover[0].endswith(".tmp.csv")
    assert list(tmp_path.glob("*_log.csv")) == [target]  # evaluate.py's glob for training logs
    assert glob.glob(str(tmp_path / "*")) == [str(target)]  # shell-style globs skip it

    # run to the end, the writer replaces the file whole
    subprocess.run([sys.executable, "-c", script, str(target)], check=True, env=ENV)
    lines = target.read_text().splitlines()
    assert len(lines) == 400_000 and lines[-1] == "N2 line 399999"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~script_io._UMASK)


WRITE_CALLS = {"write_text", "write_bytes", "save", "save_file", "imwrite", "savefig", "to_csv", "dump", "write",
               "writerows", "writerow", "writelines"}


def _writes_outside_atomic_path(tree: ast.AST) -> list[int]:
    """Line numbers of file writes not lexically inside ``with ... atomic_path(...)``."""
    found = []
    # names bound to an in-memory file (``x = io.BytesIO()``): a write into one touches no file
    in_memory = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Call) and getattr(node.value.func, "attr", None) in ("BytesIO", "StringIO")
                 for target in node.targets if isinstance(target, ast.Name)}

    def is_atomic(item: ast.withitem) -> bool:
        call = item.context_expr
        return isinstance(call, ast.Call) and (getattr(call.func, "attr", None) == "atomic_path"
                                               or getattr(call.func, "id", None) == "atomic_path")

    def visit(node: ast.AST, inside: bool) -> None:
        if isinstance(node, ast.With):
            inside = inside or any(is_atomic(item) for item in node.items)
        if isinstance(node, ast.Call) and not inside:
            name = getattr(node.func, "attr", None)
            owner = getattr(getattr(node.func, "value", None), "attr", None)  # sys.stdout.write
            opens_for_writing = getattr(node.func, "id", None) == "open" and any(
                isinstance(arg, ast.Constant) and isinstance(arg.value, str) and set(arg.value) & set("wax+")
                for arg in node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"])
            into_memory = any(getattr(arg, "id", None) in in_memory for arg in node.args[:1])
            if (name in WRITE_CALLS and owner not in ("stdout", "stderr") and not into_memory) or opens_for_writing:
                found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


@pytest.mark.slow
def test_every_write_of_the_pipeline_goes_through_atomic_path(tmp_path):
    """Checked on the source: a write outside ``with atomic_path(...)`` could leave a torn output."""
    scripts = sorted(REPO.glob("*.py")) + sorted((REPO / "sleepstaging").rglob("*.py"))
    names = {p.relative_to(REPO).as_posix() for p in scripts}
    assert {"sleepstaging/training/engine.py", "infer_blend.py", "blend.py", "postprocess.py", "evaluate.py",
            "sleepstaging/scoring/blend.py", "sleepstaging/scoring/postprocess.py"} <= names
    offenders = {p.relative_to(REPO).as_posix(): lines for p in scripts
                 if (lines := _writes_outside_atomic_path(ast.parse(p.read_text())))}
    assert not offenders, f"writes outside atomic_path (file: lines): {offenders}"
    # the check sees a plain write
    sample = "import numpy as np\ndef f(path, x):\n    np.save(path, x)\n    with atomic_path(path) as tmp:\n" \
             "        np.save(tmp, x)\n"
    assert _writes_outside_atomic_path(ast.parse(sample)) == [3]
    in_memory = "import io\ndef f(image):\n    buffer = io.BytesIO()\n    image.save(buffer)\n    image.save('x.png')\n"
    assert _writes_outside_atomic_path(ast.parse(in_memory)) == [5]


@pytest.mark.slow
def test_a_cache_half_built_by_a_killed_run_is_detected_and_rebuilt(runs):
    base, cache = runs["base"], runs["k_cache"]
    assert runs["k_status"] == -signal.SIGKILL
    # killed with the first recording's array still being written: no recording complete
    assert runs["k_after_kill"] and not [name for name in runs["k_after_kill"] if name.endswith(".json")]
    folders = {p.parent for p in cache.rglob("*.json")}
    assert len(folders) == 1
    folder = folders.pop()
    # the run after it built every recording, each array beside its manifest ...
    complete = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    recordings = sorted(set(psg_layout.read_epoch_csv(base / "DATA" / psg_layout.TRAIN_CSV, True).recording_ids))
    assert complete == sorted([f"{r}.json" for r in recordings] + [f"{r}.npy" for r in recordings])
    # ... with the bytes of the cache C built in one go (and trained to C's weights: the tests above)
    reference = base / "cwd_C" / "cache" / folder.relative_to(cache)
    for recording in recordings:
        assert (folder / f"{recording}.npy").read_bytes() == (reference / f"{recording}.npy").read_bytes()
