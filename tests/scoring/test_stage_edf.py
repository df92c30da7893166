"""stage_edf.py: an unscored EDF night in, hypnogram, statistics and annotations out.

Tiny random-initialised models (test_vit, test_efficientnet) score a
half-hour synthetic night exported by make_synthetic.py --edf, its
hypnogram withheld; the same night in the challenge layout through the
separate scripts must give the same stages.
"""
from __future__ import annotations

import csv
import datetime
import json
import shutil

import edfio
import numpy as np
import pytest

from sleepstaging.scoring import blend, cohort
from sleepstaging.training import engine
from sleepstaging.data import psg_layout
import stage_edf
from conftest import run_script, write_random_checkpoints
from sleepstaging.script_io import InputError

VIT, EFF, IMG = "test_vit", "test_efficientnet", 32
SPLIT = {"folds": 3, "seed": 72, "cv": "subject"}
MODELS = ("--vit-arch", VIT, "--eff-arch", EFF, "--vit-epochs", 0, "--eff-epochs", 0)
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # a shared 2-core machine: more threads only fight
EDF_START = datetime.datetime(2026, 1, 5, 22, 30, 0)  # synthetic_files.EDF_START (make_synthetic.py --edf)


@pytest.fixture(scope="module")
def weights(tiny_data, tmp_path_factory):
    return write_random_checkpoints(tiny_data, tmp_path_factory.mktemp("weights"), (VIT, EFF), (0,), IMG, SPLIT)


@pytest.fixture(scope="module")
def night(tiny_data, tmp_path_factory):
    """The first test recording's EDF alone in a folder (its hypnogram withheld): (ID, EDF path)."""
    recording_id = sorted(set(psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, False).recording_ids))[0]
    folder = tmp_path_factory.mktemp("night")
    shutil.copy(tiny_data / "edf" / f"{recording_id}.edf", folder / f"{recording_id}.edf")
    return recording_id, folder / f"{recording_id}.edf"


@pytest.fixture(scope="module")
def scored(weights, night, tmp_path_factory):
    """One stage_edf.py run on the night: (output folder, completed process)."""
    out = tmp_path_factory.mktemp("scored") / "scored"
    result = run_script("stage_edf.py", "--edf", night[1], "--weights-dir", weights, "--out", out,
                        "--montage", "synthetic", *MODELS, "--batch-size", 16, "--workers", 1, env=ONE_THREAD)
    return out, result


def read_table(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_scores_an_unscored_night(tiny_data, night, scored):
    recording_id, _ = night
    out, result = scored
    epochs = len((tiny_data / "edf" / f"{recording_id}.hypnogram.csv").read_text().splitlines())
    summaries = [line for line in result.stdout.splitlines() if line.startswith(f"{recording_id}: ")]
    assert len(summaries) == 1
    assert summaries[0].startswith(f"{recording_id}: {epochs} epochs, start 2026-01-05 22:30:00; TST ")
    assert summaries[0].endswith(f"-> {out / recording_id}")

    table = read_table(out / recording_id / f"{recording_id}-hypnogram.csv")
    assert [int(r["epoch"]) for r in table] == list(range(1, epochs + 1))  # every whole epoch from the start
    assert [float(r["onset_s"]) for r in table] == [30.0 * n for n in range(epochs)]
    expected_clock = [(EDF_START + datetime.timedelta(seconds=30 * n)).isoformat(sep=" ") for n in range(epochs)]
    assert [r["clock_time"] for r in table] == expected_clock
    for name in (f"{recording_id}-Hypnogram.edf", f"{recording_id}-hypnogram.png", f"{recording_id}-statistics.json"):
        assert (out / recording_id / name).is_file()
    statistics = read_table(out / "sleep_statistics.csv")
    assert [row["recording_id"] for row in statistics] == [recording_id]
    asleep = sum(r["stage_after"] != "Wake" for r in table)
    assert float(statistics[0]["TST"]) == pytest.approx(asleep / 2)

    config = json.loads((out / cohort.MARKER).read_text())
    assert config["recordings"] == [recording_id] and set(config["step_seconds"]) == set(cohort.STEPS)
    assert config["method"] == "sqrt" and config["ens_weight"] == 0.06  # blend.py's defaults
    assert "\n== post-process\n" in (out / cohort.LOG).read_text()  # each step's name, then what it printed
    assert not (out / cohort.PARTIAL).exists()
    assert (out / cohort.FAILURES).read_text() == ",".join(cohort.FAILURE_COLUMNS) + "\n"  # none failed
    from sleepstaging.scoring import review_page
    page = review_page.read_page_data(out / recording_id / review_page.PAGE_NAME)  # the review page, both models
    assert page["id"] == recording_id and len(page["models"]) == 2 and len(page["images"]) == epochs
    assert page["stage"] == [psg_layout.STAGE_TO_INT[r["stage_after"]] for r in table]
    assert recording_id in (out / "index.html").read_text()


@pytest.mark.slow
def test_same_stages_as_the_layout_route(tiny_data, weights, night, scored, tmp_path):
    """render_edf.py with the withheld hypnogram, then infer_blend/blend/postprocess: the same stages."""
    recording_id, edf = night
    withheld = tmp_path / "withheld"
    withheld.mkdir()
    for name in (f"{recording_id}.edf", f"{recording_id}.hypnogram.csv"):
        (withheld / name).symlink_to(tiny_data / "edf" / name)
    data, outputs = tmp_path / "DATA", tmp_path / "outputs"
    run_script("render_edf.py", "--edf", withheld, "--out", data, "--split", "test", "--montage", "synthetic",
               "--trim-wake", "none", "--workers", 1, "--quiet")
    run_script("infer_blend.py", "--data-root", data, "--weights-dir", weights, "--out", outputs, *MODELS,
               "--batch-size", 16, "--workers", 0, "--no-cache", "--quiet", env=ONE_THREAD)
    run_script("blend.py", "--data-root", data, "--out", outputs, *MODELS, "--quiet")
    blend_csv = outputs / "filesblend_sqrt_[0]_[0].csv"
    run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", outputs / "files_post.csv")

    test = psg_layout.read_epoch_csv(data / psg_layout.TEST_CSV, False)
    answers = psg_layout.read_epoch_csv(data / psg_layout.TEST_LABELS_CSV, True)
    by_epoch = {int(r["epoch"]): r for r in read_table(scored[0] / recording_id / f"{recording_id}-hypnogram.csv")}
    rows = [by_epoch[psg_layout.epoch_number_of(idnum)] for idnum in test.idnums]
    assert 0 < len(rows) < len(by_epoch)  # the unscored leading epochs are scored by stage_edf only
    assert [r["stage_before"] for r in rows] == blend_csv.read_text().split()
    assert [r["stage_after"] for r in rows] == (outputs / "files_post.csv").read_text().split()
    blended = np.load(blend_csv.with_suffix(".npy"))
    np.testing.assert_allclose([[float(r[f"p_{s}"]) for s in psg_layout.STAGES] for r in rows], blended, atol=2e-6)
    # and so the same agreement with the withheld hypnogram
    agreement = np.mean([psg_layout.STAGE_TO_INT[r["stage_after"]] == label for r, label in zip(rows, answers.labels)])
    layout = np.mean(np.array([psg_layout.STAGE_TO_INT[s] for s in (outputs / "files_post.csv").read_text().split()])
                     == answers.labels)
    assert agreement == layout

    # The hmm, its transitions counted from the models' training labels: the same stages both ways too.
    train_csv = tiny_data / psg_layout.TRAIN_CSV
    run_script("postprocess.py", "--data-root", data, "--in", blend_csv, "--out", outputs / "files_hmm.csv",
               "--method", "hmm", "--train-csv", train_csv, "--no-recordings")
    hmm_out = tmp_path / "scored_hmm"
    run_script("stage_edf.py", "--edf", edf, "--weights-dir", weights, "--out", hmm_out, "--montage", "synthetic",
               *MODELS, "--batch-size", 16, "--workers", 1, "--postprocess", "hmm", "--train-csv", train_csv,
               "--no-figures", "--quiet", env=ONE_THREAD)
    by_epoch = {int(r["epoch"]): r for r in read_table(hmm_out / recording_id / f"{recording_id}-hypnogram.csv")}
    hmm_stages = [by_epoch[psg_layout.epoch_number_of(idnum)]["stage_after"] for idnum in test.idnums]
    assert hmm_stages == (outputs / "files_hmm.csv").read_text().split()
    assert hmm_stages != [r["stage_after"] for r in rows]  # the hmm is not the rules


def stage_error(*args) -> str:
    with pytest.raises(InputError) as error:
        stage_edf.main([str(a) for a in args])
    return str(error.value)


@pytest.mark.slow
def test_bad_input_ends_with_one_line_and_leaves_nothing(weights, night, scored, tmp_path):
    recording_id, edf = night
    out = tmp_path / "scored"
    common = ("--weights-dir", weights, "--out", out, *MODELS, "--workers", 1, "--quiet")

    # an EDF without the named montage's channels
    assert "montage sleep-edf needs channels the EDF does not have" in stage_error("--edf", edf, "--montage",
                                                                                   "sleep-edf", *common)
    # a truncated EDF
    cut = tmp_path / "cut.edf"
    cut.write_bytes(edf.read_bytes()[:-5000])
    assert "EDF is truncated" in stage_error("--edf", cut, "--montage", "synthetic", *common)
    # a recording shorter than one epoch
    short = tmp_path / "short.edf"
    edfio.Edf([edfio.EdfSignal(np.zeros(2000), 100, label="EEG", physical_dimension="uV",
                               physical_range=(-200, 200))], data_record_duration=1).write(short)
    montage = tmp_path / "montage.json"
    montage.write_text(json.dumps({"rows": {"C3-M2": {"channel": "EEG"}}}))
    assert "shorter than one 30-s epoch" in stage_error("--edf", short, "--montage", montage, *common)
    # weights whose configuration does not match (refused before anything is drawn)
    other = tmp_path / "weights"
    shutil.copytree(weights, other)
    config_path = engine.run_config_path(other, VIT, 0)
    config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), model_arch=EFF)))
    mismatched = ("--weights-dir", other, "--out", out, *MODELS, "--workers", 1, "--quiet")
    assert "configuration is of test_efficientnet" in stage_error("--edf", edf, "--montage", "synthetic", *mismatched)
    # a checkpoint of another model under the configured name (found when it loads, after rendering)
    shutil.copytree(weights, other, dirs_exist_ok=True)
    shutil.copy(engine.checkpoint_path(other, EFF, 0, 0), engine.checkpoint_path(other, VIT, 0, 0))
    assert "checkpoint does not fit" in stage_error("--edf", edf, "--montage", "synthetic", *mismatched)
    refused = stage_error("--edf", edf, "--postprocess", "hmm", *common)  # no model set, no labels
    assert "has no model set record" in refused and "name labelled epochs with --train-csv" in refused
    assert "--train-csv is read by --postprocess hmm only, not by --postprocess rules" in stage_error(
        "--edf", edf, "--train-csv", edf, *common)
    assert "--train-csv not found" in stage_error("--edf", edf, "--postprocess", "hmm", "--train-csv",
                                                  tmp_path / "none.csv", *common)
    assert not out.exists() and not list(tmp_path.glob(".*stage-partial"))

    # an output folder that holds results: refused; --overwrite replaces only stage_edf's own results
    done = scored[0]
    before = (done / cohort.MARKER).read_bytes()
    refused = run_script("stage_edf.py", "--edf", edf, "--weights-dir", weights, "--out", done, "--montage",
                         "synthetic", *MODELS, check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: --out already holds results") and "--overwrite" in refused.stderr
    assert (done / cohort.MARKER).read_bytes() == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("keep me")
    assert "did not write" in stage_error("--edf", edf, "--montage", "synthetic", *common[:2], "--out", foreign,
                                          *MODELS, "--overwrite", "--quiet")
    assert (foreign / "thesis.txt").read_text() == "keep me"


@pytest.mark.slow
def test_overwrite_replaces_an_earlier_result(weights, night, tmp_path, capsys):
    recording_id, edf = night
    out = tmp_path / "scored"
    args = ["--edf", str(edf), "--weights-dir", str(weights), "--out", str(out), "--montage", "synthetic",
            *map(str, MODELS), "--workers", "1", "--quiet", "--postprocess", "none", "--no-figures"]
    stage_edf.main(args)
    (out / "stale.txt").write_text("from before")
    stage_edf.main(args + ["--overwrite"])
    assert not (out / "stale.txt").exists() and (out / recording_id / f"{recording_id}-hypnogram.csv").is_file()
    table = read_table(out / recording_id / f"{recording_id}-hypnogram.csv")
    assert all(r["stage_before"] == r["stage_after"] for r in table)  # --postprocess none
    assert not (out / recording_id / f"{recording_id}-hypnogram.png").exists()  # --no-figures
    assert capsys.readouterr().out.count(f"{recording_id}: ") == 2


def test_from_tune_blends_as_the_file_says_and_keeps_the_inference_tta(tmp_path, monkeypatch):
    """--from-tune blends as the file says (its dump scale and tta included); inference keeps --tta."""
    tune = tmp_path / "blend_tune.json"
    tune.write_text(json.dumps({"method": "avg", "ens_weight": 0.3, "power": 0.25, "dump_scale": "original", "tta": 3}))
    args = stage_edf.parser.parse_args(["--edf", str(tmp_path), "--weights-dir", str(tmp_path), "--out",
                                        str(tmp_path / "scored"), "--from-tune", str(tune), "--tta", "1"])
    stage_edf.resolve_settings(args)
    stage_edf.check_args(args)
    assert (args.method, args.ens_weight, args.dump_scale, args.tta) == ("avg", 0.3, "original", 1)
    blended = []
    monkeypatch.setattr(blend, "blend_test_dumps", lambda *a: blended.append(a))
    cohort.blend_chunk(args, tmp_path / "DATA", tmp_path / "outputs")
    (_, _, _, _, _, method, weight, power, scales, config), = blended
    assert (method, weight, power) == ("avg", 0.3, 0.25)
    assert scales == pytest.approx((1 / (4 * 3), 1 / (800 * 3)))  # the tuned tta's row scales, by hand
    assert config["tta"] == 3
    assert cohort.infer_options(args, tmp_path / "DATA", tmp_path / "outputs").tta == 1
