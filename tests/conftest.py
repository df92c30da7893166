"""Shared fixtures: a tiny synthetic data set and a way to run the scripts."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# Scripts run from a scratch folder (set per session below), so that what they write by default
# relative to the working folder (cache/, weights/, outputs/) stays out of the repository.
SCRATCH = REPO


@pytest.fixture(scope="session", autouse=True)
def scratch_working_folder(tmp_path_factory):
    global SCRATCH
    SCRATCH = tmp_path_factory.mktemp("cwd")


def run_script(script: str, *args, check: bool = True, timeout: float = 600, env=None) -> subprocess.CompletedProcess:
    """Run ``python <script> args...`` (a path in the repository) from the scratch folder, capturing output.

    The hash seed is pinned (``PYTHONHASHSEED=0``) unless ``env`` sets another.
    """
    full_env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    result = subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=SCRATCH, capture_output=True, text=True, timeout=timeout, env=full_env,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{script} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small synthetic data set in the challenge layout (shared, read-only).

    6 train and 2 test recordings of about 0.5 h each (about 60 epochs each),
    with EDF exports. Tests must not modify it: copy it first.
    """
    root = tmp_path_factory.mktemp("tiny") / "DATA"
    run_script(
        "make_synthetic.py", "--out", root, "--train-subjects", 6, "--test-subjects", 2,
        "--hours", 0.5, "--seed", 0, "--workers", 2, "--edf", "--quiet",
    )
    return root


def copy_subset(source: Path, target: Path, train_recordings: int, train_rows: int,
                test_recordings: int = 1, test_rows: int = 12) -> Path:
    """A smaller data root: the first rows of the first recordings of each CSV of ``source``, with their images."""
    import shutil

    from sleepstaging.data import psg_layout
    from sleepstaging import script_io
    for name, with_labels, recordings, per_recording in (
            (psg_layout.TRAIN_CSV, True, train_recordings, train_rows),
            (psg_layout.TEST_CSV, False, test_recordings, test_rows)):
        table = psg_layout.read_epoch_csv(source / name, with_labels=with_labels)
        keep = sorted(set(table.recording_ids))[:recordings]
        rows, counts = [], {}
        for row, (recording, idnum) in enumerate(zip(table.recording_ids, table.idnums)):
            if recording in keep and counts.get(recording, 0) < per_recording:
                counts[recording] = counts.get(recording, 0) + 1
                rows.append([recording, idnum] + ([psg_layout.STAGES[table.labels[row]]] if with_labels else []))
                (target / recording).mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / recording / idnum, target / recording / idnum)
        script_io.write_csv_rows(target / name, rows)
    return target


@contextlib.contextmanager
def one_thread():
    """One BLAS thread for torch in this process while inside (training is fastest so on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def trainer_args(module, data_root: Path, weights_dir: Path, *options):
    """A trainer's parsed options (``module``: main_vit_rgb or main_eff) for a tiny run in this process.

    The options every in-process training run of the tests shares (data,
    weights and cache folders, no workers, quiet, random initialisation so nothing downloads) come first; ``options``
    (architecture, size, epochs...) follow and may override them. Run it
    with ``engine.train(trainer_args(...))``.
    """
    from sleepstaging.training import train_options
    shared = ["--data-root", data_root, "--weights-dir", weights_dir, "--cache-dir", Path(weights_dir).parent / "cache",
              "--workers", 0, "--quiet", "--pretrained", "none"]
    return train_options.build_parser(module.DEFAULTS, module.__doc__).parse_args([str(o) for o in [*shared, *options]])


_WARM_LAUNCHER = r'''
import json, os, runpy, sys, traceback
repo, parallel = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, repo)
os.chdir(repo)
for name in sys.argv[3:]:
    __import__(name)  # imported once here; no torch op runs here, so forking stays safe
requests = [json.loads(line) for line in sys.stdin]
sys.stdout.flush()
sys.stderr.flush()


def run(request):
    """In the forked child: the script as `python script args...` would run it, then exit with its status."""
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = request["argv"]
    status = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as stop:
        if isinstance(stop.code, int) or stop.code is None:
            status = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


running, statuses, queue = {}, {}, list(enumerate(requests))
while queue or running:
    while queue and len(running) < parallel:
        index, request = queue.pop(0)
        pid = os.fork()
        if pid == 0:
            run(request)
        running[pid] = index
    pid, status = os.wait()
    statuses[running.pop(pid)] = os.waitstatus_to_exitcode(status)
print(json.dumps([statuses[index] for index in range(len(requests))]))
'''


def run_scripts_warm(requests, folder: Path, parallel: int = 3, timeout: float = 900,
                     preload=("sleepstaging.training.engine", "sleepstaging.data.loaders", "sleepstaging.scoring.inference")) -> list[subprocess.CompletedProcess]:
    """Run many scripts, each in its own process, without paying the torch/timm import each time.

    A launcher process imports ``preload`` once, then forks one child per
    request (``parallel`` at a time); each child runs the real script file as
    ``__main__`` with its own argv, environment additions, stdout and stderr
    (files under ``folder``) and exit status, as ``python script args...``
    would (an uncaught exception prints its traceback and gives status 1).

    Parameters
    ----------
    requests : sequence of (script, args, env) or (script, args, env, cwd)
        Script path relative to the repository, its arguments, extra
        environment, working folder (default: the scratch folder, as run_script).
    folder : Path
        Where the captured stdout/stderr files go.

    Returns
    -------
    list of subprocess.CompletedProcess, in request order.
    """
    import json

    folder.mkdir(parents=True, exist_ok=True)
    lines, outputs = [], []
    for number, (script, args, extra_env, *cwd) in enumerate(requests):
        argv = [str(REPO / script), *map(str, args)]
        out, err = folder / f"{number}.stdout", folder / f"{number}.stderr"
        lines.append(json.dumps({"argv": argv, "env": dict(extra_env or {}), "cwd": str(cwd[0] if cwd else SCRATCH),
                                 "stdout": str(out), "stderr": str(err)}))
        outputs.append((argv, out, err))
    launcher = subprocess.run(
        [sys.executable, "-c", _WARM_LAUNCHER, str(REPO), str(parallel), *preload],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env=dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1"),
    )
    if launcher.returncode != 0:
        raise AssertionError(f"launcher failed ({launcher.returncode}):\n{launcher.stderr[-4000:]}")
    statuses = json.loads(launcher.stdout.strip().splitlines()[-1])
    return [subprocess.CompletedProcess([sys.executable, *argv], status, out.read_text(), err.read_text())
            for (argv, out, err), status in zip(outputs, statuses)]


def write_random_checkpoints(data_root: Path, folder: Path, archs, epochs, img_size: int, split: dict) -> Path:
    """Checkpoints of freshly initialised models with the training config inference reads.

    For each architecture and epoch: ``<arch>_fold_0_<epoch>`` (seeded per
    model and epoch), and ``<arch>_fold_0_config.json`` naming fold 0's
    validation recordings of ``split`` (``folds``, ``seed``, ``cv``).
    """
    import json

    import numpy as np
    import torch

    from sleepstaging.training import engine
    from sleepstaging.scoring import models
    from sleepstaging.data import loaders
    from sleepstaging.data import psg_layout
    table = psg_layout.read_epoch_csv(Path(data_root) / psg_layout.TRAIN_CSV, with_labels=True)
    folds = loaders.make_folds(table, n_folds=split["folds"], seed=split["seed"], cv=split["cv"])
    valid_recordings = sorted({table.recording_ids[r] for r in np.flatnonzero(folds == 0)})
    for number, arch in enumerate(archs):
        for epoch in epochs:
            torch.manual_seed(10 * number + epoch)
            model = models.create_model(arch, (img_size, img_size))
            models.save_weights(model, engine.checkpoint_path(folder, arch, 0, epoch))
        config = dict(model_arch=arch, img_size=img_size, num_classes=5, fold=0,
                      valid_recordings=valid_recordings, **split)
        engine.run_config_path(folder, arch, 0).write_text(json.dumps(config))
    return folder


# The fast loop, `bash run.sh test -m "not slow"`, skips the tests marked `slow` in their own files
# (`@pytest.mark.slow`, or `pytestmark` for a whole file): those that launch trainers, the generator
# or whole flows, or take a second or more each on an idle 2-core machine. CI runs everything.
def pytest_configure(config):
    config.addinivalue_line("markers", "slow: launches trainers, the generator or a whole flow; "
                                       "skipped by the fast loop (-m 'not slow')")


# A skip whose reason says DID NOT RUN (the review page's browser tests without a browser) is repeated at the
# end of every run, whatever -q or -r say: pytest alone would print only "1 skipped".
LOUD_SKIP = "DID NOT RUN"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if LOUD_SKIP in reason and reason not in reasons:
            reasons.append(reason)
    for reason in reasons:
        terminalreporter.write_sep("!", "SKIPPED", red=True, bold=True)
        terminalreporter.write_line(reason.removeprefix("Skipped: "), red=True, bold=True)
