"""bench/cohort_bench.py on the CPU with bench/stand_in_model_set.py's models (what bench/gpu_bench.sh runs on a GPU).

Two half-hour nights and the truncated copy, scored by stage_edf.py with a
stand-in set of the tiny test architectures: the report counts what the
scored folder holds, and names no GPU.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import safetensors.numpy

from conftest import run_script
from sleepstaging.output_names import checkpoint_path, run_config_path
from sleepstaging.scoring import model_set
from sleepstaging.synthetic import hypnogram as synthetic_hypnogram

pytestmark = pytest.mark.slow


def test_a_stand_in_set_and_the_cohort_bench_on_the_cpu(tmp_path):
    weights = tmp_path / "stand_in"
    run_script("bench/stand_in_model_set.py", "--out", weights, "--vit-arch", "test_vit", "--eff-arch",
               "test_efficientnet", "--vit-epochs", 3, 4, "--eff-epochs", 2, 3, "--vit-img-size", 32, 48,
               "--eff-img-size", 32, "--resize", "area", "--stage-balance", 0.5, "--hypnogram-nights", 3,
               "--hypnogram-hours", 1.0)
    record = model_set.read_model_set(weights)
    assert record["models"] == {"fold": 0, "vit_arch": "test_vit", "eff_arch": "test_efficientnet",
                                "vit_epochs": [3, 4], "eff_epochs": [2, 3]}
    assert (record["postprocess"], record["hmm"]["stage_balance"]) == ("hmm", 0.5)
    nights = [synthetic_hypnogram.recording_hypnogram(0, index, 1.0) for index in range(3)]
    scored = [night[night != synthetic_hypnogram.UNSCORED] for night in nights]
    counts = record["hmm"]["counts"]
    assert counts["stages"] == np.bincount(np.concatenate(scored), minlength=5).tolist()
    assert sum(map(sum, counts["transitions"])) == sum(len(night) - 1 for night in scored)
    for arch, img_size in (("test_vit", [32, 48]), ("test_efficientnet", [32, 32])):  # each model its own input
        config = json.loads(run_config_path(weights, arch, 0).read_text())
        assert (config["img_size"], config["resize"], config["stage_balance"]) == (img_size, "area", 0.5)  # as trainers
    first, second = (safetensors.numpy.load_file(checkpoint_path(weights, "test_vit", 0, e)) for e in (3, 4))
    assert any(not np.array_equal(first[name], second[name]) for name in first)  # each checkpoint its own draw
    # a folder that is not a stand-in is never emptied
    refused = run_script("bench/stand_in_model_set.py", "--out", tmp_path, "--vit-arch", "test_vit", "--eff-arch",
                         "test_efficientnet", "--vit-epochs", 0, "--eff-epochs", 0, "--vit-img-size", 32,
                         "--eff-img-size", 32, "--resize", "area", "--stage-balance", 0, check=False)
    assert refused.returncode == 2 and "not a stand-in model set" in refused.stderr and weights.is_dir()

    work, result = tmp_path / "work", tmp_path / "cohort.json"
    run_script("bench/cohort_bench.py", "--weights-dir", weights, "--nights", 2, "--hours", 0.5, "--workers", 1,
               "--device", "cpu", "--work", work, "--result", result, "--figure", tmp_path / "night.png", "--no-yasa")
    report = json.loads(result.read_text())
    ids = sorted(folder.name for folder in (work / "scored").iterdir()
                 if folder.is_dir() and folder.name.startswith("A2026"))
    epochs = 0
    for recording_id in ids:
        with open(work / "scored" / recording_id / f"{recording_id}-hypnogram.csv", newline="") as handle:
            epochs += len(list(csv.DictReader(handle)))
    assert (report["nights"], report["epochs"], report["device"], report["gpu"]) == (2, epochs, "cpu", None)
    # nights per hour from the unrounded seconds; wall_seconds is rounded to 0.1 s
    assert report["nights_per_hour"] == pytest.approx(2 * 3600 / report["wall_seconds"],
                                                      rel=0.06 / report["wall_seconds"] + 1e-3)
    assert report["settings"]["vit_arch"] == "test_vit" and report["settings"]["postprocess"] == "hmm"
    assert set(report["step_seconds"]) >= {"render", "infer", "blend", "post-process"}
    # seconds per night: the main process's parts add up to the whole command's; the drawing's are its own
    per_night = report["seconds_per_night"]
    assert sum(per_night["main process"].values()) == pytest.approx(per_night["wall"], abs=0.03)
    assert per_night["main process"]["inference"] == pytest.approx(report["step_seconds"]["infer"] / 2, abs=0.01)
    assert per_night["drawing processes (busy, beside the main process)"] > 0
    assert report["render_ahead"] == 0 and report["yasa"] is None  # --workers 1: drawn here; --no-yasa
    assert all(value > 50 for value in report["peak_rss_mib"].values())  # MiB, a Python process with numpy
    assert (tmp_path / "night.png").read_bytes()[:4] == b"\x89PNG"
    # without figures and review pages: stage_edf.py draws no figure, so none is copied, and the report says so
    quiet = tmp_path / "cohort_quiet.json"
    run_script("bench/cohort_bench.py", "--weights-dir", weights, "--nights", 2, "--hours", 0.5, "--workers", 1,
               "--device", "cpu", "--work", work, "--result", quiet, "--figure", tmp_path / "none.png", "--no-yasa",
               "--no-figures", "--no-review-pages")
    settings = json.loads(quiet.read_text())["settings"]
    assert (settings["no_figures"], settings["no_review_pages"]) == (True, True)
    assert not (tmp_path / "none.png").exists()
    assert not list((work / "scored").glob("*/*-hypnogram.png"))
