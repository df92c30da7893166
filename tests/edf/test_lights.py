"""Lights off and lights on: from the EDF (flags or EDF+ annotations) through the timing sidecar to the statistics."""
from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
from pathlib import Path

import edfio
import numpy as np
import pytest

from sleepstaging.edf import lights
from sleepstaging.edf.edf_signals import open_edf
from sleepstaging.scoring import postprocess
from sleepstaging.data import epoch_timing
from sleepstaging.data import psg_layout
import render_edf
from sleepstaging import script_io
from sleepstaging.scoring.night_outputs import in_lights_period, write_recording_outputs, write_statistics_table
from sleepstaging.scoring.sleep_statistics import sleep_statistics
from sleepstaging.script_io import InputError

W, N1, N2, N3, R = range(5)
START = datetime.datetime(2024, 3, 1, 22, 30, 0)


# --------------------------------------------------------------------------
# The period rule and the statistics over it
# --------------------------------------------------------------------------
def test_an_epoch_counts_when_its_midpoint_is_in_the_period():
    onsets = np.array([0.0, 30.0, 60.0])  # midpoints 15, 45, 75 s
    np.testing.assert_array_equal(in_lights_period(onsets, 30.0), [True, True, True])
    np.testing.assert_array_equal(in_lights_period(onsets, 30.0, lights_off=40.0), [False, True, True])  # 10 s in
    np.testing.assert_array_equal(in_lights_period(onsets, 30.0, lights_off=50.0), [False, False, True])  # 20 s in
    np.testing.assert_array_equal(in_lights_period(onsets, 30.0, lights_on=75.0), [True, True, False])  # [off, on)
    np.testing.assert_array_equal(in_lights_period(onsets, 30.0, 15.0, 75.5), [True, True, True])


#        0  1   2  3  4  5   6   7  8   9  10  11     lights off at epoch 3's onset, on at epoch 10's
NIGHT = [W, N1, W, W, W, N1, N2, W, N2, R, W, N2]
NIGHT_OUTPUTS = {"onsets": np.arange(12) * 30.0, "epoch_numbers": np.arange(1, 13)}


def write_night(folder: Path, name: str, figure: bool = False, **lights) -> dict:
    probabilities = np.eye(5)[NIGHT] * 0.9 + 0.02
    return write_recording_outputs(folder, name, NIGHT_OUTPUTS["onsets"], np.array(NIGHT), np.array(NIGHT),
                                   probabilities, START, NIGHT_OUTPUTS["epoch_numbers"], 30.0, figure=figure, **lights)


def test_statistics_run_from_lights_off_to_lights_on(tmp_path):
    stats = write_night(tmp_path, "night", figure=True, lights_off=90.0, lights_on=300.0, lights_source="test")
    # inside: epochs 3-9, W W N1 N2 W N2 R, 0.5 min each
    assert stats["TIB"] == 3.5 and stats["TST"] == 2.0 and stats["SPT"] == 2.5
    assert stats["SOL"] == 1.0  # from lights off (epoch 3) to epoch 5; from the recording start it would be 0.5
    assert stats["WASO"] == 0.5 and stats["awakenings"] == 1 and stats["stage_shifts"] == 5
    assert stats["SE"] == pytest.approx(100 * 2.0 / 3.5) and stats["Lat_REM"] == 3.0
    assert stats["W"] == 1.5 and stats["N2"] == 1.0 and math.isnan(stats["Lat_N3"])  # no N3
    assert {key: stats[key] for key in list(stats)[-9:-2]} == {
        "period": "lights off to lights on", "lights_off_s": 90.0, "lights_on_s": 300.0,
        "lights_off_clock": "22:31:30", "lights_on_clock": "22:35:00", "lights_source": "test",
        "epochs_outside_lights": 5}
    assert list(stats)[:-9] == list(sleep_statistics(np.array(NIGHT)))
    assert list(stats)[-2:] == ["epochs_flagged", "quality_warnings"]  # the signal quality's keys come last

    folder = tmp_path / "night"
    with open(folder / "night-hypnogram.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:5] == ["epoch", "onset_s", "clock_time", "in_lights_period", "stage_before"]
    assert "".join(row["in_lights_period"] for row in rows) == "000111111100"
    written = json.loads((folder / "night-statistics.json").read_text())
    assert written["lights_off_clock"] == "22:31:30" and written["TIB"] == 3.5 and written["Lat_N3"] is None
    assert (folder / "night-hypnogram.png").read_bytes()[:4] == b"\x89PNG"


def test_lights_part_way_into_an_epoch_and_one_bound_alone(tmp_path):
    ten_in = write_night(tmp_path, "a", lights_off=100.0)  # epoch 3 (90-120 s) keeps its midpoint, 105 s
    twenty_in = write_night(tmp_path, "b", lights_off=110.0)  # epoch 3 begins at 4, the next one
    assert (ten_in["TIB"], ten_in["SOL"], ten_in["epochs_outside_lights"]) == (4.5, 1.0, 3)
    assert (twenty_in["TIB"], twenty_in["SOL"], twenty_in["epochs_outside_lights"]) == (4.0, 0.5, 4)
    assert ten_in["period"] == "lights off to lights on" and ten_in["lights_on_s"] is None
    assert ten_in["lights_on_clock"] is None and ten_in["lights_off_clock"] == "22:31:40"
    on_only = write_night(tmp_path, "c", lights_on=45.0)  # only epoch 1 (midpoint 15 s) is inside
    assert (on_only["TIB"], on_only["TST"], on_only["epochs_outside_lights"]) == (0.5, 0.0, 11)


def test_statistics_table_with_and_without_lights(tmp_path):
    table = tmp_path / "sleep_statistics.csv"
    write_statistics_table(table, {"lit": write_night(tmp_path, "lit", lights_off=90.0, lights_on=300.0,
                                                      lights_source="--lights-off/--lights-on"),
                                   "whole": write_night(tmp_path, "whole")})
    with open(table, newline="") as handle:
        lit, whole = csv.DictReader(handle)
    assert (lit["TIB"], lit["period"], lit["lights_off_s"], lit["lights_on_clock"]) == (
        "3.5", "lights off to lights on", "90", "22:35:00")
    assert (lit["lights_source"], lit["epochs_outside_lights"]) == ("--lights-off/--lights-on", "5")
    assert (whole["TIB"], whole["period"], whole["epochs_outside_lights"]) == ("6", "whole recording", "0")
    assert whole["lights_off_s"] == whole["lights_on_clock"] == whole["lights_source"] == ""
    write_statistics_table(table, {})  # no recording: the header alone, with the same columns
    assert table.read_text() == ",".join(lit) + "\n"


def test_no_epoch_in_the_lights_period_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"no epoch has its midpoint between lights off \(22:31:40\) and lights on "
                                         r"\(22:31:44\)"):
        write_night(tmp_path, "empty", lights_off=100.0, lights_on=104.0)
    assert not (tmp_path / "empty").exists()


# --------------------------------------------------------------------------
# The timing sidecar
# --------------------------------------------------------------------------
def test_sidecar_round_trip_and_older_sidecars(tmp_path):
    timing = epoch_timing.EpochTiming("N1", START, 30.0, 0.0, (1, 2, 3), 45.0, 255.5, "--lights-off/--lights-on")
    path = epoch_timing.write_epoch_timing(tmp_path / "N1", timing)
    assert epoch_timing.read_epoch_timing(tmp_path, "N1", [1, 2]) == timing
    document = json.loads(path.read_text())
    for key in ("lights_off", "lights_on", "lights_source"):
        del document[key]
    path.write_text(json.dumps(document))  # as written before lights times were recorded
    old = epoch_timing.read_epoch_timing(tmp_path, "N1", [1])
    assert (old.lights_off, old.lights_on, old.lights_source, old.start) == (None, None, None, START)

    for bad, message in (({"lights_off": "late"}, "seconds >= 0 or null, got 'late'"),
                         ({"lights_on": -3}, "seconds >= 0 or null, got -3"),
                         ({"lights_off": 60, "lights_on": 60}, r"lights off \(60 s\) must come before"),
                         ({"lights_source": 7}, "lights_source must be text")):
        path.write_text(json.dumps({**document, **bad}))
        with pytest.raises(InputError, match=f"not an epoch timing file .*{message}.*N1.timing.json"):
            epoch_timing.read_epoch_timing(tmp_path, "N1", [1])


# --------------------------------------------------------------------------
# render_edf.py: EDF+ annotations or flags
# --------------------------------------------------------------------------
SECONDS = 300  # 10 epochs from 22:30:00


def write_edf(path: Path, annotations=(), start: datetime.datetime = START) -> Path:
    """A 10-epoch EDF+ with one EEG channel and ``annotations`` as ``(onset s, text)``."""
    signal = edfio.EdfSignal(np.zeros(SECONDS * 10), 10, label="EEG", physical_dimension="uV",
                             physical_range=(-200, 200))
    edfio.Edf([signal], starttime=start.time(), recording=edfio.Recording(startdate=start.date()),
              annotations=[edfio.EdfAnnotation(onset, None, text) for onset, text in annotations]).write(path)
    return path


def render(edf: Path, out: Path, *flags: str) -> None:
    montage = edf.parent / "montage.json"
    montage.write_text(json.dumps({"rows": {"C3-M2": {"channel": "EEG"}}}))
    render_edf.main(["--edf", str(edf), "--out", str(out), "--split", "test", "--unscored", "--montage", str(montage),
                     "--workers", "1", "--quiet", *flags])


def test_annotations_and_flags_give_the_same_lights(tmp_path):
    # two lights-off marks and two lights-on marks: the first off and the last on count
    edf = write_edf(tmp_path / "NIGHT.edf", [(45, "Lights Off"), (100, "LIGHTS_OUT"), (200, "light-on"),
                                             (255, "lights on"), (260, "lights dimmed")])
    render(edf, tmp_path / "A")
    render(edf, tmp_path / "B", "--lights-off", "22:30:45", "--lights-on", "255")
    from_annotations = epoch_timing.read_epoch_timing(tmp_path / "A", "NIGHT", [1])
    from_flags = epoch_timing.read_epoch_timing(tmp_path / "B", "NIGHT", [1])
    assert (from_annotations.lights_off, from_annotations.lights_on) == (from_flags.lights_off, from_flags.lights_on) \
        == (45.0, 255.0)
    assert from_annotations.lights_source == "EDF+ annotations 'Lights Off'/'lights on'"
    assert from_flags.lights_source == "--lights-off/--lights-on"
    record = json.loads((tmp_path / "B" / "NIGHT" / "render_edf.json").read_text())
    assert (record["lights_off_s"], record["lights_on_s"], record["lights_source"]) == (
        45.0, 255.0, "--lights-off/--lights-on")
    assert (record["lights_off"], record["lights_on"]) == ("22:30:45", "255")  # the options as given

    # a flag wins for its own bound only; a recording without marks has no lights times
    assert lights.resolve_lights(open_edf(edf), None, "240.5") == (
        45.0, 240.5, "--lights-on, EDF+ annotation 'Lights Off'")
    assert lights.resolve_lights(open_edf(write_edf(tmp_path / "plain.edf"))) == (None, None, None)


@pytest.mark.parametrize("off_text, on_text", [("lightsoff", "Light On"), (" light_out ", "LIGHTS-ON"),
                                                ("Lights-Out", "lighton"), ("LIGHT OFF", "lights_on")])
def test_label_spellings_match_without_case_spaces_underscores_hyphens(tmp_path, off_text, on_text):
    edf = write_edf(tmp_path / "n.edf", [(30.5, off_text), (120, "Lights offset"), (270, on_text)])
    assert lights.resolve_lights(open_edf(edf))[:2] == (30.5, 270.0)


def test_lights_errors_are_one_line_naming_the_file(tmp_path):
    edf = write_edf(tmp_path / "NIGHT.edf", [(45, "Lights off")])

    def error(*flags):
        with pytest.raises(InputError) as caught:
            render(edf, tmp_path / "DATA", *flags)
        assert not (tmp_path / "DATA").exists()
        return str(caught.value)

    assert error("--lights-on", "30") == ("lights off at 45 s is at or after lights on at 30 s from the recording "
                                          f"start (--lights-on, EDF+ annotation 'Lights off') ({edf})")
    assert error("--lights-off", "200", "--lights-on", "22:31") == (
        "lights off at 200 s is at or after lights on at 60 s from the recording start (--lights-off/--lights-on) "
        f"({edf})")
    # 07:00 is the next morning, 30,600 s after the 22:30 start
    assert error("--lights-on", "07:00") == ("lights on (--lights-on 07:00) at 30600 s is outside the recording "
                                             f"(0 to 300 s) ({edf})")
    assert error("--lights-off", "300.5").startswith("lights off (--lights-off 300.5) at 300.5 s is outside")
    with pytest.raises(InputError, match=r"^--lights-off 22:45 is a clock time, but the EDF header has no start "
                                         r"date and time: give seconds from the recording start \(.*NIGHT.edf\)$"):
        lights.resolve_lights(dataclasses.replace(open_edf(edf), start=None), "22:45", None)
    with pytest.raises(SystemExit):  # neither a clock time nor seconds: a usage error
        render_edf.parse_args(["--edf", str(edf), "--out", "x", "--split", "test", "--lights-off", "25:00"])


# --------------------------------------------------------------------------
# postprocess.py: the sidecar's lights reach the statistics
# --------------------------------------------------------------------------
def test_postprocess_takes_the_lights_from_the_sidecar(tmp_path):
    data = tmp_path / "DATA"
    script_io.write_csv_rows(data / psg_layout.TEST_CSV, [("N", psg_layout.image_name("N", n)) for n in range(1, 13)])
    epoch_timing.write_epoch_timing(data / "N", epoch_timing.EpochTiming(
        "N", START, 30.0, 0.0, tuple(range(1, 13)), 90.0, 300.0, "EDF+ annotations 'Lights off'/'Lights on'"))
    test = psg_layout.read_epoch_csv(data / psg_layout.TEST_CSV, with_labels=False)
    stages = np.array(NIGHT)
    statistics = postprocess.write_recordings(tmp_path / "out", postprocess.place_recordings(str(data), test),
                                              stages, stages, np.eye(5)[NIGHT], figures=False)
    assert statistics["N"]["TIB"] == 3.5 and statistics["N"]["SOL"] == 1.0
    assert statistics["N"]["lights_source"] == "EDF+ annotations 'Lights off'/'Lights on'"

    epoch_timing.write_epoch_timing(data / "N", epoch_timing.EpochTiming(  # lights on before epoch 1's midpoint
        "N", START, 30.0, 0.0, tuple(range(1, 13)), None, 10.0, "--lights-on"))
    with pytest.raises(InputError, match=r"no listed epoch of recording N lies between lights off and lights on "
                                         r"\(--lights-on\) \(.*N.timing.json\)"):
        postprocess.place_recordings(str(data), test)


def test_a_lights_table_gives_each_night_its_own_lights(tmp_path):
    """stage_edf.py --lights-table: per night, as the flags would; unlisted nights keep their annotations."""
    import argparse

    import stage_edf

    import functools

    from sleepstaging.scoring import cohort
    from sleepstaging.edf.render import RecordingSource
    from sleepstaging.scoring.rendered_nights import RenderAhead, RenderedNight

    nights = tmp_path / "nights"
    nights.mkdir()
    write_edf(nights / "A.edf", [(45, "Lights Off"), (255, "Lights On")])
    write_edf(nights / "B.edf", [(45, "Lights Off"), (255, "Lights On")])
    write_edf(nights / "C.edf", [(45, "Lights Off"), (255, "Lights On")])
    table = tmp_path / "lights.csv"
    table.write_text("recording_id,lights_off,lights_on\nA,22:31:00,240\nB,,120\n")
    montage = tmp_path / "montage.json"
    montage.write_text(json.dumps({"rows": {"C3-M2": {"channel": "EEG"}}}))
    args = argparse.Namespace(edf=nights, montage=str(montage), lights_off=None, lights_on=None, lights_table=table,
                              lights_by_night=lights.read_lights_table(table), keep_images=False,
                              no_review_pages=True, tta=1)
    chunk = [RecordingSource(name, nights / f"{name}.edf", None) for name in ("A", "B", "C")]
    renders = RenderAhead(chunk, cohort.render_settings(args, [], tmp_path / "DATA"),
                          functools.partial(cohort.night_lights, args), None, 0)
    assert [(source.recording_id, type(night)) for source, night in renders.nights(chunk)] == [
        (name, RenderedNight) for name in "ABC"]
    timings = {name: epoch_timing.read_epoch_timing(tmp_path / "DATA", name, [1]) for name in "ABC"}
    assert (timings["A"].lights_off, timings["A"].lights_on, timings["A"].lights_source) == (
        60.0, 240.0, "lights table lights.csv")
    # an empty cell: that bound from the night's own annotation
    assert (timings["B"].lights_off, timings["B"].lights_on, timings["B"].lights_source) == (
        45.0, 120.0, "lights table lights.csv, EDF+ annotation 'Lights Off'")
    assert (timings["C"].lights_off, timings["C"].lights_on) == (45.0, 255.0)  # not listed: its annotations
    assert timings["C"].lights_source == "EDF+ annotations 'Lights Off'/'Lights On'"

    # the table is checked before anything is drawn, each problem with its row
    for content, message in (("id,off,on\n", r"header must be recording_id,lights_off,lights_on \(.*lights.csv:1\)"),
                             ("recording_id,lights_off,lights_on\nA,7pm,\n", r"got '7pm' \(.*lights.csv:2\)"),
                             ("recording_id,lights_off,lights_on\nA,1,2\nA,3,4\n", r"listed twice \(.*lights.csv:3\)"),
                             ("recording_id,lights_off,lights_on\nA,1\n", r"expected 3 cells, found 2 \(.*:2\)")):
        table.write_text(content)
        with pytest.raises(InputError, match=message):
            lights.read_lights_table(table)
    refused = stage_edf.parser.parse_args(["--edf", str(nights), "--weights-dir", str(tmp_path), "--out",
                                           str(tmp_path / "out"), "--lights-table", str(table), "--lights-on", "1"])
    stage_edf.resolve_settings(refused)
    with pytest.raises(InputError, match="leave out --lights-off and --lights-on"):
        stage_edf.check_args(refused)
