"""stage_edf.py on a folder of nights: one bad night does not stop the others, --resume goes on with a run.

Tiny random-initialised models score two half-hour synthetic nights exported
by make_synthetic.py --edf (their hypnograms withheld) beside a truncated
EDF, in chunks of one night.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil

import edfio
import pytest

from sleepstaging.scoring import cohort
from sleepstaging.scoring import inference
from sleepstaging.scoring import postprocess
from sleepstaging.data import psg_layout
import stage_edf
from conftest import write_random_checkpoints
from sleepstaging.script_io import InputError

VIT, EFF, IMG = "test_vit", "test_efficientnet", 32
SPLIT = {"folds": 3, "seed": 72, "cv": "subject"}
MODELS = ("--vit-arch", VIT, "--eff-arch", EFF, "--vit-epochs", 0, "--eff-epochs", 0)


@pytest.fixture(scope="module")
def weights(tiny_data, tmp_path_factory):
    return write_random_checkpoints(tiny_data, tmp_path_factory.mktemp("weights"), (VIT, EFF), (0,), IMG, SPLIT)


@pytest.fixture(scope="module")
def night_ids(tiny_data):
    return sorted(set(psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, False).recording_ids))


def cohort_folder(tiny_data, folder, night_ids):
    """The test nights' EDFs and a truncated copy of the first, named ``broken.edf``, in one folder tree."""
    (folder / "site_b").mkdir(parents=True)
    for recording_id, subfolder in zip(night_ids, (folder, folder / "site_b")):
        shutil.copy(tiny_data / "edf" / f"{recording_id}.edf", subfolder / f"{recording_id}.edf")
    whole = (tiny_data / "edf" / f"{night_ids[0]}.edf").read_bytes()
    (folder / "broken.edf").write_bytes(whole[:len(whole) // 2])
    return folder


def stage(*args):
    """``stage_edf.main`` on these options; its exit status (0 when it returns)."""
    try:
        stage_edf.main([str(a) for a in args])
    except SystemExit as end:
        return end.code
    return 0


def options(edf, weights, out, *extra):
    return ("--edf", edf, "--weights-dir", weights, "--out", out, "--montage", "synthetic", *MODELS,
            "--batch-size", 16, "--workers", 1, "--quiet", "--no-figures", "--chunk-nights", 1, *extra)


def stages_after(out, recording_id):
    with open(out / recording_id / f"{recording_id}-hypnogram.csv", newline="") as handle:
        return [row["stage_after"] for row in csv.DictReader(handle)]


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_cohort_scores_the_good_nights_lists_the_bad_one_and_resume_does_nothing(
        tiny_data, weights, night_ids, tmp_path, monkeypatch, capsys):
    edf = cohort_folder(tiny_data, tmp_path / "nights", night_ids)
    out = tmp_path / "scored"
    loads, passes = [], []
    load, finish = inference.load_checkpoints, inference.ChunkInference.finish
    monkeypatch.setattr(inference, "load_checkpoints", lambda arch, *a: loads.append(arch) or load(arch, *a))
    monkeypatch.setattr(inference.ChunkInference, "finish", lambda chunk: passes.append(chunk.rows) or finish(chunk))

    assert stage(*options(edf, weights, out)) == 1  # one night failed, the others scored
    printed = capsys.readouterr().out
    assert "3 night(s): 0 scored before, 0 failed before on unchanged files, 3 to score" in printed
    assert "broken (render): EDF is truncated" in printed
    assert loads == [VIT, EFF]  # the checkpoints are loaded once for the three chunks
    assert len(passes) == 2  # one batched pass per chunk; the broken night's chunk had no image

    with open(out / cohort.FAILURES, newline="") as handle:
        failures = list(csv.DictReader(handle))
    assert [(row["recording_id"], row["step"]) for row in failures] == [("broken", "render")]
    assert failures[0]["reason"].startswith("EDF is truncated") and failures[0]["edf"] == str(edf / "broken.edf")
    with open(out / postprocess.STATISTICS_TABLE, newline="") as handle:
        assert [row["recording_id"] for row in csv.DictReader(handle)] == night_ids
    for recording_id in night_ids:
        assert (out / recording_id / cohort.RENDER_RECORD.format(name=recording_id)).is_file()
    marker = json.loads((out / cohort.MARKER).read_text())
    assert marker["recordings"] == night_ids and marker["failed"] == ["broken"]

    # The same nights in one chunk of three (one batched pass over both nights' images): the same stages.
    together = tmp_path / "together"
    assert stage(*options(edf, weights, together)[:-2], "--chunk-nights", 3) == 1
    assert all(stages_after(together, i) == stages_after(out, i) for i in night_ids)

    # --resume: everything done or failed on an unchanged file; it says so and touches nothing.
    before = snapshot(out)
    capsys.readouterr()
    assert stage(*options(edf, weights, out, "--resume")) == 1
    printed = capsys.readouterr().out
    assert "2 scored before, 1 failed before on unchanged files (--retry-failed tries them again), 0 to score" in \
        printed and f"nothing to do in {out}" in printed
    assert snapshot(out) == before and loads == [VIT, EFF, VIT, EFF]  # (the chunk-of-three run loaded them too)

    # A repaired file is tried again: the cohort is complete, the failures table empty, exit status 0.
    shutil.copy(tiny_data / "edf" / f"{night_ids[0]}.edf", edf / "broken.edf")
    assert stage(*options(edf, weights, out, "--resume")) == 0
    assert (out / cohort.FAILURES).read_text() == ",".join(cohort.FAILURE_COLUMNS) + "\n"
    assert stages_after(out, "broken") == stages_after(out, night_ids[0])  # the same recording under another ID
    for name, content in before.items():  # the nights scored before are left as they were
        if name.startswith(tuple(night_ids)):
            assert (out / name).read_bytes() == content


@pytest.mark.slow
def test_a_killed_run_is_resumed_and_its_unfinished_night_redone(tiny_data, weights, night_ids, tmp_path,
                                                                 monkeypatch, capsys):
    edf = tmp_path / "nights"
    edf.mkdir()
    for recording_id in night_ids:
        shutil.copy(tiny_data / "edf" / f"{recording_id}.edf", edf / f"{recording_id}.edf")
    reference = tmp_path / "reference"
    assert stage(*options(edf, weights, reference)) == 0

    out = tmp_path / "scored"
    calls = []
    post = cohort.postprocess_chunk

    def killed_in_the_second_chunk(*arguments):
        calls.append(arguments)
        if len(calls) == 2:
            raise KeyboardInterrupt
        post(*arguments)

    monkeypatch.setattr(cohort, "postprocess_chunk", killed_in_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        stage(*options(edf, weights, out))
    monkeypatch.setattr(cohort, "postprocess_chunk", post)
    assert cohort.scored_nights(out) == night_ids[:1] and not (out / cohort.PARTIAL).exists()
    # a folder of the second night that a crash of some other kind left half-written is not taken as done
    (out / night_ids[1]).mkdir()
    (out / night_ids[1] / f"{night_ids[1]}-hypnogram.csv").write_text("epoch\n")

    capsys.readouterr()
    assert stage(*options(edf, weights, out, "--resume")) == 0
    assert "2 night(s): 1 scored before, 0 failed before on unchanged files, 1 to score" in capsys.readouterr().out
    for recording_id in night_ids:
        assert stages_after(out, recording_id) == stages_after(reference, recording_id)
    with open(out / postprocess.STATISTICS_TABLE, newline="") as handle:
        assert [row["recording_id"] for row in csv.DictReader(handle)] == night_ids


@pytest.mark.slow
def test_nights_drawn_ahead_in_processes_give_what_nights_drawn_here_one_chunk_at_a_time_give(
        tiny_data, weights, night_ids, tmp_path, monkeypatch):
    """--workers 2 --render-ahead 2 (drawing overlapping inference, across chunks) and --workers 2 (the next
    chunk drawn while this one is post-processed) against --workers 1 (each chunk drawn in this process, then
    inferred): every file of every night the same; --keep-images keeps the PNG files, not the arrays."""
    import torch

    edf = tmp_path / "nights"
    edf.mkdir()
    for recording_id in night_ids:
        shutil.copy(tiny_data / "edf" / f"{recording_id}.edf", edf / f"{recording_id}.edf")
    # the same inference threads both ways (the number may change the last bits: test_rendered_nights.py)
    monkeypatch.setattr(stage_edf, "inference_threads", lambda args: torch.get_num_threads())
    serial, ahead, pooled = tmp_path / "serial", tmp_path / "ahead", tmp_path / "pooled"
    assert stage(*options(edf, weights, serial)) == 0
    assert stage(*options(edf, weights, ahead), "--workers", 2, "--render-ahead", 2, "--keep-images") == 0
    assert stage(*options(edf, weights, pooled), "--workers", 2) == 0
    marker = json.loads((ahead / cohort.MARKER).read_text())
    assert marker["render_ahead"] == 2 and marker["drawing"]["nights"] == 2
    assert json.loads((pooled / cohort.MARKER).read_text())["render_ahead"] == 0  # the CPU's default
    for recording_id in night_ids:
        assert snapshot(pooled / recording_id) == snapshot(serial / recording_id)
    for recording_id in night_ids:
        kept = sorted(p.name for p in (ahead / recording_id / "images").iterdir())
        epochs = len(stages_after(serial, recording_id))
        assert len([name for name in kept if name.endswith(".png")]) == epochs and "rendered_epochs.npy" not in kept
        shutil.rmtree(ahead / recording_id / "images")
        assert snapshot(ahead / recording_id) == snapshot(serial / recording_id)
    assert (ahead / postprocess.STATISTICS_TABLE).read_bytes() == (serial / postprocess.STATISTICS_TABLE).read_bytes()


def test_resume_refuses_other_settings_and_options_that_do_not_go_together(tmp_path):
    out = tmp_path / "scored"
    out.mkdir()
    argv = ["--edf", str(tmp_path), "--weights-dir", str(tmp_path), "--out", str(out), *map(str, MODELS)]
    args = stage_edf.parser.parse_args(argv + ["--resume"])
    stage_edf.resolve_settings(args)
    args.tta = 1
    settings = cohort.result_settings(args)
    (out / cohort.MARKER).write_text(json.dumps({"settings": dict(settings, method="avg")}))
    with pytest.raises(InputError, match="--resume with other settings than the run that wrote --out: method is "
                                         "'sqrt' here, 'avg' there"):
        cohort.check_out(out, args)
    (out / cohort.MARKER).write_text(json.dumps({"settings": settings}))
    assert cohort.check_out(out, args) is True
    args.resume = False
    with pytest.raises(InputError, match="--resume goes on with them, --overwrite replaces them"):
        cohort.check_out(out, args)
    for extra, message in ((["--resume", "--overwrite"], "choose one"), (["--retry-failed"], "goes with --resume"),
                           (["--chunk-nights", "0"], "--chunk-nights must be 1 or more")):
        args = stage_edf.parser.parse_args(argv + extra)
        stage_edf.resolve_settings(args)
        with pytest.raises(InputError, match=message):
            stage_edf.check_args(args)


def test_failed_nights_are_kept_only_while_their_file_is_unchanged(tmp_path):
    """plan_nights: scored nights are skipped; a failure is kept while the file has the same size and time."""
    out = tmp_path / "scored"
    (out / "A").mkdir(parents=True)
    (out / "A" / "A-statistics.json").write_text("{}")
    (out / "B").mkdir()  # half-written: no statistics
    nights = []
    for name in ("A", "B", "C", "D"):
        (tmp_path / f"{name}.edf").write_bytes(b"x" * 10)
        nights.append(argparse.Namespace(recording_id=name, edf=tmp_path / f"{name}.edf"))
    rows = [{"recording_id": n, "edf": str(tmp_path / f"{n}.edf"), "step": "render", "reason": "bad",
             **cohort.file_stamp(tmp_path / f"{n}.edf")} for n in ("C", "D")]
    with open(out / cohort.FAILURES, "w", newline="") as handle:
        writer = csv.DictWriter(handle, cohort.FAILURE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "D.edf").write_bytes(b"x" * 11)  # changed since it failed

    pending, done, kept = cohort.plan_nights(nights, out, resuming=True, retry_failed=False)
    assert [n.recording_id for n in pending] == ["B", "D"] and done == ["A"] and list(kept) == ["C"]
    pending, _, kept = cohort.plan_nights(nights, out, resuming=True, retry_failed=True)
    assert [n.recording_id for n in pending] == ["B", "C", "D"] and kept == {}
    pending, done, _ = cohort.plan_nights(nights, out, resuming=False, retry_failed=False)
    assert len(pending) == 4 and done == []


def scored_by_hand(chunk, out, run):
    """In place of ``cohort.score_chunk``: a night whose file begins ``broken`` fails at its render; every other
    gets the real per-night outputs of a hand-made four-epoch hypnogram (no render, no model)."""
    import numpy as np

    from sleepstaging.scoring import night_outputs
    failures = {}
    for source in chunk:
        if source.edf.read_bytes().startswith(b"broken"):
            failures[source.recording_id] = {"recording_id": source.recording_id, "edf": str(source.edf),
                                             "step": "render", "reason": "EDF is truncated",
                                             **cohort.file_stamp(source.edf)}
            continue
        stages = np.array([0, 1, 2, 2])
        night_outputs.write_recording_outputs(out, source.recording_id, 30.0 * np.arange(4), stages, stages,
                                              np.eye(5)[stages], None, np.arange(1, 5), figure=False)
    return failures


def test_the_exit_status_is_1_while_a_night_is_failed_and_0_once_all_are_scored(tmp_path, monkeypatch, capsys):
    """stage_edf.main's exit status, with the scoring of a chunk, the models and their configurations stubbed.

    A failed night (in the failures table, the other scored): 1; --resume with
    that night's file unchanged, nothing to do: 1 again; the file repaired
    and --resume: 0, the failures table empty.
    """
    monkeypatch.setattr(cohort, "score_chunk", scored_by_hand)
    monkeypatch.setattr(stage_edf, "load_models", lambda args, configs: ({}, "cpu"))
    monkeypatch.setattr(stage_edf.model_set, "read_model_configs", lambda *args: {})
    nights, out = tmp_path / "nights", tmp_path / "scored"
    nights.mkdir()
    (nights / "bad.edf").write_bytes(b"broken")
    (nights / "good.edf").write_bytes(b"fine")
    argv = ("--edf", nights, "--weights-dir", tmp_path / "weights", "--out", out, "--workers", 1, "--quiet",
            "--no-figures", "--no-review-pages")

    assert stage(*argv) == 1
    assert "1 night(s) failed, listed with their reasons" in capsys.readouterr().out
    assert list(cohort.read_failures(out)) == ["bad"] and cohort.scored_nights(out) == ["good"]
    assert stage(*argv, "--resume") == 1
    assert f"nothing to do in {out}" in capsys.readouterr().out
    (nights / "bad.edf").write_bytes(b"repaired")
    assert stage(*argv, "--resume") == 0
    assert cohort.read_failures(out) == {} and cohort.scored_nights(out) == ["bad", "good"]


# --------------------------------------------------------------------------
# A sleep lab's folder: lights in the EDF+ annotations, planted signal faults, a corrupt file
# --------------------------------------------------------------------------
def faulty_night(source, target, lights, flat_epochs, clipped_epochs):
    """``source`` with Thorax dropped, Chin EMG zero over ``flat_epochs`` and C3-M2 pinned at its physical
    maximum over ``clipped_epochs`` (1-based), and ``lights`` (onset s, text) as EDF+ annotations."""
    edf = edfio.read_edf(source)
    edf.drop_signals(["Thorax"])
    for label, epochs, value in (("Chin EMG", flat_epochs, lambda s: 0.0), ("C3-M2", clipped_epochs,
                                                                            lambda s: s.physical_max)):
        signal = edf.get_signal(label)
        data, rate = signal.data.copy(), signal.sampling_frequency
        for epoch in epochs:
            data[int((epoch - 1) * 30 * rate):int(epoch * 30 * rate)] = value(signal)
        signal.update_data(data, keep_physical_range=True)
    edf.add_annotations([edfio.EdfAnnotation(onset, None, text) for onset, text in lights])
    edf.write(target)


def thorax_optional_montage(path):
    """The synthetic montage as a JSON file, its Thorax row optional (so a night without it is still drawn)."""
    rows = {name: {"channel": "SpO2" if name.startswith("SpO2") else name} for name in psg_layout.SIGNAL_NAMES}
    rows["Thorax"]["optional"] = True
    path.write_text(json.dumps({"rows": rows}))
    return path


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_lab_folder_with_lights_faults_and_a_corrupt_file(tiny_data, weights, night_ids, tmp_path, capsys):
    first, second = night_ids
    edf = tmp_path / "lab"
    edf.mkdir()
    faulty_night(tiny_data / "edf" / f"{first}.edf", edf / f"{first}.edf",
                 lights=[(120.0, "Lights Off"), (1500.0, "LIGHTS_ON")], flat_epochs=(3, 4), clipped_epochs=(7,))
    epochs = int(edfio.read_edf(tiny_data / "edf" / f"{second}.edf").duration // 30)
    faulty_night(tiny_data / "edf" / f"{second}.edf", edf / f"{second}.edf", lights=[],
                 flat_epochs=range(1, epochs + 1), clipped_epochs=())
    (edf / "corrupt.edf").write_bytes(b"0       " + bytes(range(256)) * 4)
    out = tmp_path / "scored"
    command = ["--edf", edf, "--weights-dir", weights, "--out", out, "--montage",
               thorax_optional_montage(tmp_path / "montage.json"), *MODELS, "--batch-size", 16, "--workers", 2,
               "--quiet"]

    assert stage(*command) == 1
    printed = capsys.readouterr().out
    assert "corrupt (render): cannot read EDF" in printed
    assert f"{second}: {epochs} epochs" in printed and "warning: Chin EMG flat in 100.0 % of epochs" in printed
    assert [row["recording_id"] for row in read_rows(out / cohort.FAILURES)] == ["corrupt"]

    # the first night: time in bed from lights off (120 s) to lights on (1500 s), faults flagged epoch by epoch
    table = read_rows(out / first / f"{first}-hypnogram.csv")
    inside = [int(row["epoch"]) for row in table if row["in_lights_period"] == "1"]
    assert inside == list(range(5, 51))  # onsets 120 .. 1470 s: midpoints inside [120, 1500)
    flagged = {int(row["epoch"]): row for row in table if row["quality"] == "flagged"}
    assert sorted(flagged) == [3, 4, 7]
    assert flagged[3]["flat_signals"] == flagged[4]["flat_signals"] == "Chin EMG"
    assert flagged[7]["clipped_signals"] == "C3-M2"
    assert {row["missing_signals"] for row in table} == {"Thorax"}  # not a key row: no flag of its own
    statistics = {row["recording_id"]: row for row in read_rows(out / postprocess.STATISTICS_TABLE)}
    assert list(statistics) == night_ids
    lit = statistics[first]
    assert (lit["period"], lit["lights_off_s"], lit["lights_on_s"]) == ("lights off to lights on", "120", "1500")
    assert "EDF+" in lit["lights_source"] and lit["epochs_outside_lights"] == str(len(table) - 46)
    asleep = sum(row["stage_after"] != "Wake" for row in table if row["in_lights_period"] == "1")
    assert (float(lit["TIB"]), float(lit["TST"])) == (23.0, asleep / 2)
    assert (lit["epochs_flagged"], lit["quality_warnings"]) == ("3", "")
    dark = statistics[second]
    assert (dark["period"], dark["epochs_flagged"]) == ("whole recording", str(epochs))
    assert dark["quality_warnings"] == "Chin EMG flat in 100.0 % of epochs"

    # a second run with --resume has nothing to do, says so and changes nothing
    before = snapshot(out)
    assert stage(*command, "--resume") == 1
    printed = capsys.readouterr().out
    assert "2 scored before, 1 failed before on unchanged files" in printed and "nothing to do" in printed
    assert snapshot(out) == before

    # lights given on the command line (clock time, seconds) instead of annotations
    flags = tmp_path / "flags"
    assert stage("--edf", edf / f"{second}.edf", *command[2:4], "--out", flags, *command[6:], "--lights-off",
                 "22:32:00", "--lights-on", 1500) == 0
    row = read_rows(flags / postprocess.STATISTICS_TABLE)[0]
    assert (row["lights_off_s"], row["lights_on_s"], row["lights_source"]) == ("120", "1500",
                                                                               "--lights-off/--lights-on")
