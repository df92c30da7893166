"""Review pages, corrections written back, the cohort index and calibration (no browser: test_review_browser.py)."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from sleepstaging.scoring import calibration
from sleepstaging.scoring import cohort_page
from sleepstaging.scoring import corrections
from sleepstaging.scoring import review_page
from conftest import run_script
from review_night import make_night

STAGES_12 = [0, 0, 1, 2, 2, 2, 3, 3, 2, 4, 4, 0]  # W W N1 N2 N2 N2 N3 N3 N2 REM REM W


def write_corrections(path, rows, recording_id="A"):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(review_page.CORRECTION_COLUMNS)
        writer.writerows([recording_id, *row, "2026-01-06T08:00:00Z", "JD"] for row in rows)
    return path


def folder_digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def scored(tmp_path):
    folder = tmp_path / "scored"
    night = make_night(folder, "A", STAGES_12, images=False)
    review_page.write_review_page(folder / "A", "A", night["models"], night["images"])
    corrections.rebuild_statistics_table(folder)
    return folder


def test_check_order_puts_the_least_confident_and_disputed_first():
    blend = np.array([[0.9, 0.1, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [0.6, 0.4, 0, 0, 0], [0.5, 0.5, 0, 0, 0]])
    assert review_page.check_order(review_page.doubt(blend)).tolist() == [1, 3, 2, 0]  # ties: earlier first
    p1 = np.array([[1.0, 0, 0, 0, 0]] * 4)
    p2 = np.array([[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0], [0.5, 0.5, 0, 0, 0], [1.0, 0, 0, 0, 0]])
    assert review_page.disagreement(p1, p2).tolist() == [0, 1, 0.5, 0]
    assert review_page.check_order(review_page.doubt(blend, p1, p2, "disagreement")).tolist() == [1, 2, 0, 3]
    assert review_page.disagreement_runs(p1, p2) == [[1, 1]]  # epoch 2's models both say Wake (argmax ties: first)


def test_embedded_json_cannot_close_the_script_element():
    text = review_page.embedded_json({"id": "</script><script>alert(1)</script><!--"})
    assert "<" not in text and ">" not in text
    assert json.loads(text) == {"id": "</script><script>alert(1)</script><!--"}


def test_page_embeds_the_night_as_data(tmp_path):
    night = make_night(tmp_path, "<script>alert(1)<img src=x onerror=alert(1)>", STAGES_12)
    recording_id = "<script>alert(1)<img src=x onerror=alert(1)>"
    page = review_page.write_review_page(tmp_path / recording_id, recording_id, night["models"], night["images"])
    text = page.read_text()
    assert text.count("</script>") == 2 and "<img src=x" not in text  # the data block's end and the script's
    data = review_page.read_page_data(page)
    assert data["id"] == recording_id and data["stage"] == STAGES_12
    assert data["order"][:4] == [1, 4, 7, 10]  # the 0.4-confidence epochs, in time order
    assert data["disagree"] == [[1, 1], [4, 4], [7, 7], [10, 10]]
    assert all(uri.startswith("data:image/webp;base64,") for uri in data["images"]) and all(data["full"])


def test_image_budget_keeps_the_first_to_check_at_full_size(tmp_path):
    night = make_night(tmp_path, "B", [2] * 6)
    order = np.array([4, 1, 0, 2, 3, 5])
    half, _ = review_page.encode_images(night["images"], order, budget=0)
    full_size = [len(review_page.file_uri(path, review_page.FULL_SIZE, review_page.FULL_QUALITY))
                 for path in night["images"]]
    budget = sum(map(len, half)) + full_size[4] - len(half[4]) + 10  # room for exactly one full-size image
    uris, full = review_page.encode_images(night["images"], order, budget)
    assert full == [False, False, False, False, True, False] and sum(map(len, uris)) <= budget
    # room for five: the fifth in check order (epoch 3) lies past the first batch of a single worker (4 epochs)
    (size, quality), *_ = review_page.IMAGE_LEVELS
    first_level = [review_page.file_uri(path, size, quality) for path in night["images"]]
    budget = sum(map(len, first_level)) + sum(full_size[i] - len(first_level[i]) for i in (4, 1, 0, 2, 3)) + 10
    for workers in (1, 3):
        uris, full = review_page.encode_images(night["images"], order, budget, workers=workers)
        assert full == [True, True, True, True, True, False] and sum(map(len, uris)) <= budget
        assert uris[5] == first_level[5] and len(uris[0]) == full_size[0]


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_corrections_rewrite_every_output_as_computed_by_hand(scored, tmp_path):
    before = read_rows(scored / "sleep_statistics.csv")[0]
    assert float(before["TST"]) == 4.5 and float(before["WASO"]) == 0  # 9 sleep epochs of 30 s
    # epoch 5 (N2) -> Wake, epoch 10 (REM) -> N2: TST 4.0, WASO 0.5, REM 0.5, 2 awakenings... one: W inside
    path = write_corrections(tmp_path / "A-corrections.csv", [(5, "N2", "Wake"), (10, "REM", "N2")])
    result = run_script("review.py", "apply", "--scored", scored, path)
    assert "A: 2 epoch(s) changed stage" in result.stdout
    after = read_rows(scored / "sleep_statistics.csv")[0]
    assert (float(after["TST"]), float(after["WASO"]), float(after["REM"]), int(after["awakenings"])) == (4.0, 0.5, 0.5, 1)
    assert float(after["Lat_REM"]) == 5.0  # lights out to epoch 11
    table = read_rows(scored / "A" / "A-hypnogram.csv")
    assert [r["stage_after"] for r in table][4] == "Wake" and table[9]["stage_after"] == "N2"
    assert table[4]["stage_before"] == "N2"  # the machine's stage stays
    import mne
    texts = list(mne.read_annotations(scored / "A" / "A-Hypnogram.edf").description)
    assert texts == ["Sleep stage W", "Sleep stage 1", "Sleep stage 2", "Sleep stage W", "Sleep stage 2",
                     "Sleep stage 3", "Sleep stage 2", "Sleep stage R", "Sleep stage W"]
    log = read_rows(scored / "A" / "A-corrections-log.csv")
    assert [(r["epoch"], r["stage_before"], r["stage_after"], r["scorer"], r["source"]) for r in log] == [
        ("5", "N2", "Wake", "JD", "A-corrections.csv"), ("10", "REM", "N2", "JD", "A-corrections.csv")]
    assert review_page.read_page_data(scored / "A" / "review.html")["stage"][4] == 0
    index = (scored / "index.html").read_text()
    assert '"reviewed":true' in index and '"changed":2' in index
    digest = folder_digest(scored)
    run_script("review.py", "apply", "--scored", scored, path)  # again: nothing changes but the log's time
    assert {k: v for k, v in folder_digest(scored).items() if "log" not in k} == {
        k: v for k, v in digest.items() if "log" not in k}
    assert len(read_rows(scored / "A" / "A-corrections-log.csv")) == 2


@pytest.mark.parametrize("rows, recording_id, message", [
    ([(5, "N2", "Stage 9")], "A", "unknown stage 'Stage 9'"),
    ([(5, "N2", "Wake"), (13, "Wake", "N1")], "A", "night A has no epoch 13 (epochs 1 to 12)"),
    ([(5, "N2", "Wake")], "Z", "night 'Z' is not scored"),
    ([(5, "REM", "Wake")], "A", "epoch 5 of A is N2 now, the file says it was REM"),
    ([("x", "N2", "Wake")], "A", "epoch 'x' is not an epoch number"),
])
def test_a_bad_corrections_file_is_one_line_and_changes_nothing(scored, tmp_path, rows, recording_id, message):
    good = write_corrections(tmp_path / "good.csv", [(2, "Wake", "N1")])
    bad = write_corrections(tmp_path / "bad.csv", rows, recording_id)
    digest = folder_digest(scored)
    result = run_script("review.py", "apply", "--scored", scored, good, bad, check=False)
    assert result.returncode == 2 and result.stdout.count("\n") == 0 or "error" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert f"bad.csv:{3 if len(rows) == 2 else 2})" in lines[0] or "bad.csv:2)" in lines[0]
    assert folder_digest(scored) == digest  # the good file was not applied either


def two_nights(folder):
    """Nights A and B scored in ``folder`` (with pages), and one corrections file for each."""
    for recording_id in ("A", "B"):
        night = make_night(folder / "scored", recording_id, STAGES_12, images=False)
        review_page.write_review_page(folder / "scored" / recording_id, recording_id, night["models"], night["images"])
    corrections.rebuild_statistics_table(folder / "scored")
    files = [write_corrections(folder / "A-corrections.csv", [(5, "N2", "Wake"), (10, "REM", "N2")]),
             write_corrections(folder / "B-corrections.csv", [(3, "N1", "N2")], recording_id="B")]
    return folder / "scored", files


def without_applied_at(folder):
    """The folder's digest with the logs' applied_at column (the clock of each run) left out."""
    digest = folder_digest(folder)
    for log in folder.rglob("*-corrections-log.csv"):
        rows = [row[:6] + row[7:] for row in csv.reader(log.read_text().splitlines())]
        digest[str(log.relative_to(folder))] = rows
    return digest


@pytest.mark.slow
def test_corrections_of_several_nights_are_all_written_before_any_is_renamed(tmp_path, monkeypatch):
    reference, files = two_nights(tmp_path / "reference")
    run_script("review.py", "apply", "--scored", reference, *files)
    expected = without_applied_at(reference)
    scored, files = two_nights(tmp_path / "crash")
    plans = corrections.plan_corrections(scored, files)
    untouched = folder_digest(scored)
    real_plot = corrections.night_outputs.plot_recording

    def fail_on_b(path, recording_id, *args, **kwargs):  # night A is written, B's figure fails
        if recording_id == "B":
            raise OSError("disk full")
        real_plot(path, recording_id, *args, **kwargs)
    monkeypatch.setattr(corrections.night_outputs, "plot_recording", fail_on_b)
    with pytest.raises(OSError, match="disk full"):
        corrections.apply_corrections(scored, plans, "2026-01-06T09:00:00+00:00")
    assert folder_digest(scored) == untouched  # nothing renamed, no staged file left
    monkeypatch.undo()
    real_replace, renamed = corrections.os.replace, []

    def die_after_seven(source, target):  # killed during the renames: A's 6 files and B's log are in place
        if ".staged" not in Path(target).name:  # not the atomic writes of the staged files themselves
            if len(renamed) == 7:
                raise KeyboardInterrupt
            renamed.append(Path(target))
        real_replace(source, target)
    monkeypatch.setattr(corrections.os, "replace", die_after_seven)
    with pytest.raises(KeyboardInterrupt):
        corrections.apply_corrections(scored, corrections.plan_corrections(scored, files), "2026-01-06T09:00:00+00:00")
    monkeypatch.undo()
    assert [p.name for p in renamed[:7]] == ["A-corrections-log.csv", "review.html", "A-Hypnogram.edf",
                                             "A-hypnogram.png", "A-statistics.json", "A-hypnogram.csv",
                                             "B-corrections-log.csv"]
    for staged in scored.rglob(".*.staged.*"):  # what a killed process leaves: hidden, never read
        staged.unlink()
    run_script("review.py", "apply", "--scored", scored, *files)  # the same command again finishes the job
    assert without_applied_at(scored) == expected  # B's log holds its change once


def test_index_lists_nights_failures_and_escapes_them(tmp_path):
    folder = tmp_path / "scored"
    make_night(folder, "<b onmouseover=alert(1)>x", STAGES_12, images=False)
    page = cohort_page.write_index(folder, [{"recording_id": "<img src=x onerror=alert(1)>", "step": "render",
                                             "reason": "</script>"}])
    text = page.read_text()
    assert "<b onmouseover=alert(1)>x" not in text and "<img src=x" not in text and text.count("</script>") == 2
    start = text.index('id="cohort-data">') + len('id="cohort-data">')
    data = json.loads(text[start:text.index("</script>", start)])
    night = data["nights"][0]
    assert night["id"] == "<b onmouseover=alert(1)>x" and night["uncertain"] == round(4 / 12, 4) and not night["reviewed"]
    assert night["TST"] == 4.5


def test_ece_by_hand_and_temperature_recovered():
    # 4 epochs at confidence 0.8 (3 right), 2 at 0.55 (1 right): |0.75-0.8|*4/6 + |0.5-0.55|*2/6 = 0.05
    p = np.array([[0.8, 0.2, 0, 0, 0]] * 4 + [[0.55, 0.45, 0, 0, 0]] * 2)
    labels = np.array([0, 0, 0, 1, 0, 1])
    result = calibration.reliability(p, labels)
    assert result["ece"] == pytest.approx(0.05)
    assert result["count"][11] == 4 and result["count"][8] == 2  # (0.733, 0.8] and (0.533, 0.6]
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.0, (20000, 5))
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in truth])
    softened = calibration.apply_temperature(truth, 2.5)  # an under-confident model: T = 1 / 2.5 undoes it
    assert calibration.fit_temperature(softened, labels) == pytest.approx(0.4, rel=0.05)
    fixed = calibration.apply_temperature(softened, calibration.fit_temperature(softened, labels))
    assert calibration.reliability(fixed, labels)["ece"] < 0.02 < calibration.reliability(softened, labels)["ece"]
    assert (fixed.argmax(axis=1) == softened.argmax(axis=1)).all()


def test_review_yield_corrects_the_first_k_percent_of_the_order():
    import review_yield

    y_true = np.array([0, 1, 2, 2, 3, 4, 2, 2, 2, 0])
    y_pred = np.array([0, 2, 2, 2, 2, 4, 2, 2, 2, 1])  # errors at rows 1, 4, 9
    order = np.array([9, 1, 0, 2, 3, 4, 5, 6, 7, 8])    # the first 20 % (2 rows) hold two errors
    table = review_yield.yield_table(y_true, y_pred, {"page": order}, fractions=(0.1, 0.2), seeds=3)
    assert table["page"]["0.1"]["errors_left"] == 2 and table["page"]["0.2"]["errors_left"] == 1
    assert table["page"]["0.2"]["errors_removed_share"] == pytest.approx(2 / 3)
    fixed = y_pred.copy()
    fixed[[9, 1]] = y_true[[9, 1]]
    from sklearn.metrics import cohen_kappa_score, f1_score
    assert table["page"]["0.2"]["kappa"] == pytest.approx(cohen_kappa_score(y_true, fixed))
    assert table["page"]["0.2"]["macro_f1"] == pytest.approx(f1_score(y_true, fixed, average="macro"))
    assert 1 <= table["random"]["0.2"]["errors_left"] <= 3


def test_evaluation_report_gets_the_ece_and_a_reliability_diagram(tmp_path):
    p = np.array([[0.8, 0.2, 0, 0, 0]] * 4 + [[0.55, 0.45, 0, 0, 0]] * 2)
    np.save(tmp_path / "blend.npy", p)
    labels = np.array([0, 0, 0, 1, 0, 1])
    lines, summary = calibration.evaluation_section(tmp_path / "blend.csv", None, labels,
                                                    p.argmax(axis=1), tmp_path)
    assert "blend 0.0500 (mean confidence 0.717, accuracy 0.667)" in lines[2] and lines[0] == "## Calibration"
    assert summary == {"blend": {"ece": pytest.approx(0.05), "mean_confidence": pytest.approx(4.3 / 6),
                                 "accuracy": pytest.approx(4 / 6)}}
    assert (tmp_path / "reliability.png").stat().st_size > 0
    # with a model set's temperature 0.5: 0.8 : 0.2 -> 16 : 1 (4 rows, 3 right), 0.55 : 0.45 -> 0.3025 : 0.2025
    _, summary = calibration.evaluation_section(tmp_path / "blend.csv", {"calibration": {"temperature": 0.5}}, labels,
                                                p.argmax(axis=1), tmp_path)
    expected = (4 * (16 / 17 - 0.75) + 2 * (0.3025 / 0.505 - 0.5)) / 6
    assert summary["blend, temperature 0.50"]["ece"] == pytest.approx(expected)
    assert calibration.evaluation_section(tmp_path / "none.csv", None, np.zeros(6, int), np.zeros(6, int),
                                          tmp_path) == ([], {})
