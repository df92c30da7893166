"""stage_edf.py --shard K/N and --merge-shards: a cohort scored in shards and put back together.

The fast tests check the numbering (K from 0, as Slurm's ``--array=0-(N-1)``),
the split (every N-th of the sorted IDs), and the merge's refusals on shard
folders made by hand. The slow one scores five tiny nights (one of them a
truncated file) in three shards, one after another, and checks the merged
tables byte for byte against one unsharded run.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

import stage_edf
from conftest import write_random_checkpoints
from review_night import START
from sleepstaging import script_io
from sleepstaging.data import psg_layout
from sleepstaging.scoring import cohort, cohort_page, night_outputs, postprocess, shards
from sleepstaging.script_io import InputError

VIT, EFF, IMG = "test_vit", "test_efficientnet", 32
SPLIT = {"folds": 3, "seed": 72, "cv": "subject"}
MODELS = ("--vit-arch", VIT, "--eff-arch", EFF, "--vit-epochs", 0, "--eff-epochs", 0)
SLURM = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX")


@pytest.fixture(autouse=True)
def outside_a_job_array(monkeypatch):
    for variable in SLURM:
        monkeypatch.delenv(variable, raising=False)


def slurm(task, count, low=None, high=None):
    values = {"SLURM_ARRAY_TASK_ID": task, "SLURM_ARRAY_TASK_COUNT": count, "SLURM_ARRAY_TASK_MIN": low,
              "SLURM_ARRAY_TASK_MAX": high}
    return {key: str(value) for key, value in values.items() if value is not None}


def test_shards_are_numbered_from_0_by_the_option_else_by_slurm():
    assert shards.resolve_shard("2/3", {}) == shards.Shard(2, 3, "--shard")
    assert shards.resolve_shard(None, {}) is None
    assert shards.resolve_shard(None, slurm(0, 4, 0, 3)) == shards.Shard(0, 4, shards.GIVEN_BY_SLURM)
    assert shards.resolve_shard(None, slurm(3, 4)) == shards.Shard(3, 4, shards.GIVEN_BY_SLURM)
    assert shards.resolve_shard("1/2", slurm(3, 4, 0, 3)) == shards.Shard(1, 2, "--shard")  # the option wins
    assert str(shards.Shard(1, 2, "--shard")) == "1/2"
    for text, message in (("3/3", "shards of 3 are numbered 0 to 2"), ("0/0", "shards of 0"),
                          ("1", "must be K/N"), ("-1/3", "must be K/N"), ("a/3", "must be K/N")):
        with pytest.raises(InputError, match=re.escape(message)):
            shards.resolve_shard(text, {})
    # an array numbered from 1, a retried task alone, a step: the IDs do not name shards of the task count
    for environ in (slurm(3, 3, 1, 3), slurm(2, 1, 2, 2), slurm(2, 2, 0, 2), {"SLURM_ARRAY_TASK_ID": "0"}):
        with pytest.raises(InputError, match="--shard K/N"):
            shards.resolve_shard(None, environ)


def test_shard_k_of_n_takes_every_nth_sorted_id_from_the_kth():
    nights = [argparse.Namespace(recording_id=i) for i in ("n05", "n01", "n07", "n03", "n02", "n04", "n06")]
    taken = {k: [s.recording_id for s in shards.shard_nights(nights, shards.Shard(k, 3, "--shard"))]
             for k in range(3)}
    # sorted: n01 .. n07 at positions 0 .. 6; shard k: positions k, k + 3, k + 6 (kept in the given order)
    assert taken == {0: ["n01", "n07", "n04"], 1: ["n05", "n02"], 2: ["n03", "n06"]}
    assert [s.recording_id for s in shards.shard_nights(nights, shards.Shard(0, 1, "--shard"))] == \
        [s.recording_id for s in nights]
    assert shards.shard_nights(nights, shards.Shard(7, 8, "--shard")) == []
    assert shards.cohort_digest(["b", "a"]) == shards.cohort_digest(["a", "b"]) != shards.cohort_digest(["a"])


# --------------------------------------------------------------------------
# Merging shard folders made by hand
# --------------------------------------------------------------------------
COHORT = ("A", "B", "C", "D", "E")  # shard 0/3: A, D; 1/3: B, E; 2/3: C
FAILED = {"E"}
SETTINGS = {"weights_dir": "/models", "method": "sqrt", "postprocess": "hmm", "shard": None}


def failure_row(recording_id):
    return {"recording_id": recording_id, "edf": f"/nights/{recording_id}.edf", "step": "render",
            "reason": 'EDF is truncated, "half" of it', "edf_bytes": "10", "edf_modified_ns": "1"}


def whole_night(folder: Path, recording_id: str, stages: list[int]) -> None:
    """A scored night's outputs as postprocess.py writes them (no figure), and a review page."""
    epochs = np.arange(1, len(stages) + 1)
    probabilities = np.full((len(stages), 5), 0.1)
    probabilities[np.arange(len(stages)), stages] = 0.6
    night_outputs.write_recording_outputs(folder, recording_id, 30.0 * (epochs - 1), np.array(stages), np.array(stages),
                                      probabilities, START, epochs, 30.0, figure=False)
    (folder / recording_id / "review.html").write_text("page")


def make_shard(folder: Path, index: int, count: int = 3, cohort_ids=COHORT, whole_nights=False, **settings) -> Path:
    """A finished shard's folder as stage_edf.py leaves it: nights, tables, record (``settings`` override).

    A night is its whole set of outputs and a review page with ``whole_nights``, else its statistics alone
    (all the merge reads before it refuses).
    """
    shard = shards.Shard(index, count, "--shard")
    sources = [argparse.Namespace(recording_id=i) for i in cohort_ids]
    assigned = [s.recording_id for s in shards.shard_nights(sources, shard)]
    for number, recording_id in enumerate(assigned):
        if recording_id in FAILED:
            continue
        if whole_nights:
            whole_night(folder, recording_id, [0, 1, 2, 2, 3, 2, 4, 0][number:])
        else:
            (folder / recording_id).mkdir(parents=True)
            (folder / recording_id / f"{recording_id}-statistics.json").write_text('{"TST": 1.0}')
    failures = {i: failure_row(i) for i in assigned if i in FAILED}
    scored = cohort.write_tables(folder, failures)
    record = shards.shard_record(shard, sources, [s for s in sources if s.recording_id in assigned], "digest")
    run = {"settings": dict(SETTINGS, shard=str(shard), weights_dir=f"/node{index}/models", **settings),
           "shard": record, "recordings": scored, "failed": sorted(failures)}
    (folder / cohort.MARKER).write_text(json.dumps(run))
    return folder


def run_stage(*argv) -> int:
    """``python stage_edf.py argv...`` in this process: its exit status."""
    try:
        script_io.run_main(lambda: stage_edf.main([str(a) for a in argv]))
    except SystemExit as end:
        return end.code
    return 0


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def index_data(index: Path) -> dict:
    text = index.read_text()
    start = text.index('id="cohort-data">') + len('id="cohort-data">')
    return json.loads(text[start:text.index("</script>", start)])


def test_merged_tables_are_those_of_all_nights_in_one_folder_and_the_index_links_into_the_shards(tmp_path, capsys):
    folders = [make_shard(tmp_path / "shards" / f"part-{k}", k, whole_nights=True) for k in (2, 0, 1)]  # any order
    merged = tmp_path / "cohort"
    assert run_stage("--merge-shards", *folders, "--out", merged) == 1  # E failed
    assert "merged 3 shard(s) of a cohort of 5 night(s): 4 scored, 1 failed" in capsys.readouterr().out
    # the oracle: the same nights in one folder, its tables written as an unsharded run writes them
    whole = tmp_path / "whole"
    for folder in folders:
        for night in cohort.scored_nights(folder):
            shutil.copytree(folder / night, whole / night)
    cohort.write_tables(whole, {"E": failure_row("E")})
    for table in (postprocess.STATISTICS_TABLE, cohort.FAILURES):
        assert (merged / table).read_bytes() == (whole / table).read_bytes()
    assert [row["recording_id"] for row in read_rows(merged / postprocess.STATISTICS_TABLE)] == ["A", "B", "C", "D"]
    data = index_data(merged / cohort_page.INDEX_NAME)
    assert [night["id"] for night in data["nights"]] == ["A", "B", "C", "D"]
    assert data["nights"][1]["page"] == "../shards/part-1/B/review.html"
    for night in data["nights"]:
        assert (merged / unquote(night["page"])).resolve() == (tmp_path / "shards").resolve() / \
            f"part-{COHORT.index(night['id']) % 3}" / night["id"] / "review.html"
    assert [row["recording_id"] for row in data["failures"]] == ["E"]
    record = json.loads((merged / shards.MERGE_RECORD).read_text())
    assert record["recordings"] == ["A", "B", "C", "D"] and record["failed"] == ["E"]
    assert [shard["index"] for shard in record["shards"]] == [0, 1, 2] and "weights_dir" not in record["settings"]

    # merging again needs --overwrite; a folder that holds anything else is refused
    assert run_stage("--merge-shards", *folders, "--out", merged) == 2
    assert "--overwrite replaces it" in capsys.readouterr().err
    assert run_stage("--merge-shards", *folders, "--out", merged, "--overwrite") == 1
    assert run_stage("--merge-shards", *folders, "--out", folders[0]) == 2
    assert "--out is one of the shards" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("missing", "1 of 3 shard(s) missing: 2/3; score each with --shard K/3"),
    ("twice", "shard 1/3 is given twice: {s}/part-1 and {s}/copy-of-1"),
    ("night in two", "night A is in two shards: shard 0/3 ({s}/part-0) and shard 1/3 ({s}/part-1)"),
    ("other counts", "the shards split the cohort into different numbers of shards (2, 3)"),
    ("other settings", "shard 1/3 was scored with method 'avg', shard 0/3 with 'sqrt'"),
    ("other models", "shard 2/3 was scored with other model files than shard 0/3"),
    ("other cohort", "shard 2/3 split another cohort than shard 0/3 (6 and 5 night(s) under --edf"),
    ("unfinished", "shard 2/3 did not finish: run it again with --resume ({s}/part-2/stage_edf.json)"),
    ("night lost", "shard 0/3 lacks 1 of its nights (D): run it again with --resume ({s}/part-0)"),
    ("not a shard", "not a shard: scored without --shard or Slurm's job-array variables"),
])
def test_a_bad_set_of_shards_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case, message):
    root = tmp_path / "shards"
    folders = [make_shard(root / f"part-{k}", k) for k in range(3)]
    record_of = {k: folders[k] / cohort.MARKER for k in range(3)}

    def edit(k, change):
        run = json.loads(record_of[k].read_text())
        change(run)
        record_of[k].write_text(json.dumps(run))

    if case == "missing":
        folders = folders[:2]
    elif case == "twice":
        shutil.copytree(folders[1], root / "copy-of-1")
        folders.insert(2, root / "copy-of-1")
    elif case == "night in two":
        shutil.copytree(folders[0] / "A", folders[1] / "A")
    elif case == "other counts":
        folders.append(make_shard(root / "part-of-2", 1, count=2))
    elif case == "other settings":
        edit(1, lambda run: run["settings"].update(method="avg"))
    elif case == "other models":
        edit(2, lambda run: run["shard"].update(model_files_sha256="another"))
    elif case == "other cohort":
        shutil.rmtree(folders[2])
        make_shard(folders[2], 2, cohort_ids=(*COHORT, "F"))
    elif case == "unfinished":
        edit(2, lambda run: run.pop("recordings"))
    elif case == "night lost":
        shutil.rmtree(folders[0] / "D")
    elif case == "not a shard":
        edit(0, lambda run: run.pop("shard"))
    merged = tmp_path / "cohort"
    assert run_stage("--merge-shards", *folders, "--out", merged) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message.format(s=root) in lines[0]
    assert not merged.exists()


def test_resume_and_the_scoring_options_refuse_another_shard(tmp_path, monkeypatch):
    out = tmp_path / "scored"
    out.mkdir()
    argv = ["--edf", str(tmp_path), "--weights-dir", str(tmp_path), "--out", str(out), *map(str, MODELS), "--resume"]

    def checked(*extra):
        args = stage_edf.parser.parse_args(argv + list(extra))
        stage_edf.resolve_settings(args)
        stage_edf.check_args(args)
        args.tta = 1
        return args

    args = checked("--shard", "1/3")
    assert (args.shard, args.shard_given_by) == ("1/3", "--shard")
    (out / cohort.MARKER).write_text(json.dumps({"settings": cohort.result_settings(args)}))
    assert cohort.check_out(out, args) is True
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    args = checked()
    assert (args.shard, args.shard_given_by) == ("2/3", shards.GIVEN_BY_SLURM)
    with pytest.raises(InputError, match="shard is '2/3' here, '1/3' there"):
        cohort.check_out(out, args)
    with pytest.raises(InputError, match="leave out --edf, --shard and --resume"):
        stage_edf.main(["--merge-shards", str(out), "--out", str(tmp_path / "m"), "--edf", str(tmp_path)])
    with pytest.raises(InputError, match="--edf names the nights to score"):
        stage_edf.check_args(stage_edf.parser.parse_args(["--out", str(out)]))


# --------------------------------------------------------------------------
# Scoring: three shards one after another against one run
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tiny_data, tmp_path_factory):
    return write_random_checkpoints(tiny_data, tmp_path_factory.mktemp("weights"), (VIT, EFF), (0,), IMG, SPLIT)


def five_nights(tiny_data, folder):
    """Four tiny nights' EDFs (two test, two training recordings, hypnograms withheld) and a truncated copy."""
    test = sorted(set(psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, False).recording_ids))
    train = sorted(set(psg_layout.read_epoch_csv(tiny_data / psg_layout.TRAIN_CSV, True).recording_ids))[:2]
    folder.mkdir()
    for recording_id in (*test, *train):
        shutil.copy(tiny_data / "edf" / f"{recording_id}.edf", folder / f"{recording_id}.edf")
    whole = (tiny_data / "edf" / f"{test[0]}.edf").read_bytes()
    (folder / "broken.edf").write_bytes(whole[:len(whole) // 2])
    return folder, sorted((*test, *train, "broken"))


def printed_config(printed: str) -> dict:
    """The configuration a run printed first (its ``config: {...}`` line)."""
    return json.loads(next(line for line in printed.splitlines() if line.startswith("config: "))[len("config: "):])


def options(edf, weights, out, *extra):
    return ("--edf", edf, "--weights-dir", weights, "--out", out, "--montage", "synthetic", *MODELS,
            "--batch-size", 16, "--workers", 1, "--quiet", "--no-figures", "--chunk-nights", 1, *extra)


@pytest.mark.slow
def test_three_shards_merged_equal_one_unsharded_run(tiny_data, weights, tmp_path, monkeypatch, capsys):
    edf, ids = five_nights(tiny_data, tmp_path / "nights")
    whole = tmp_path / "whole"
    assert run_stage(*options(edf, weights, whole)) == 1  # broken.edf fails, the others are scored
    capsys.readouterr()

    parts = [tmp_path / "scored" / f"shard-{k}" for k in range(3)]
    assert run_stage(*options(edf, weights, parts[0], "--shard", "0/3")) == 0
    printed = capsys.readouterr().out
    assert (printed_config(printed)["shard"], printed_config(printed)["shard_given_by"]) == ("0/3", "--shard")
    assert f"shard 0/3 (given by --shard; shards are numbered from 0): 2 of the cohort's 5 night(s)" in printed
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")  # the second as a job array's task 1 of 3 (tasks 0 to 2)
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "2")
    assert run_stage(*options(edf, weights, parts[1])) == 1  # broken (last of the sorted IDs, position 4) is here
    config = printed_config(capsys.readouterr().out)
    assert (config["shard"], config["shard_given_by"]) == ("1/3", "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert run_stage(*options(edf, weights, parts[2])) == 0
    for k, part in enumerate(parts):
        record = json.loads((part / cohort.MARKER).read_text())["shard"]
        assert record["nights"] == ids[k::3] and record["cohort_nights"] == 5
        assert sorted(cohort.scored_nights(part) + list(cohort.read_failures(part))) == ids[k::3]

    merged = tmp_path / "scored" / "cohort"
    assert run_stage("--merge-shards", *parts, "--out", merged) == 1
    for table in (postprocess.STATISTICS_TABLE, cohort.FAILURES):
        assert (merged / table).read_bytes() == (whole / table).read_bytes()
    nights = index_data(merged / cohort_page.INDEX_NAME)["nights"]
    assert [night["id"] for night in nights] == [i for i in ids if i != "broken"]
    for night in nights:  # each link opens that night's review page in its shard's folder
        page = (merged / unquote(night["page"])).resolve()
        assert page.is_file() and page.parent.name == night["id"]
        assert page.parent.parent in [part.resolve() for part in parts]

    # a shard scored again with --resume has nothing to do; a shard missing or given twice is one line
    assert run_stage(*options(edf, weights, parts[1], "--shard", "1/3", "--resume")) == 1  # (--shard over Slurm's)
    assert "nothing to do" in capsys.readouterr().out
    for folders, message in ((parts[:2], "1 of 3 shard(s) missing: 2/3"),
                             ([*parts, parts[1]], f"shard 1/3 is given twice: {parts[1]} and {parts[1]}")):
        capsys.readouterr()
        assert run_stage("--merge-shards", *folders, "--out", tmp_path / "refused") == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0]
        assert not (tmp_path / "refused").exists()

    # more shards than nights: a shard given none is a finished, empty shard (the merge needs it)
    empty = tmp_path / "scored" / "shard-5-of-6"
    assert run_stage(*options(edf, weights, empty, "--shard", "5/6")) == 0
    run = json.loads((empty / cohort.MARKER).read_text())
    assert run["recordings"] == [] and run["shard"]["nights"] == []
    assert read_rows(empty / postprocess.STATISTICS_TABLE) == [] and read_rows(empty / cohort.FAILURES) == []
