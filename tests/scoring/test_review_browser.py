"""The review page in a real browser: headless Chromium (Debian's) driven by Playwright, the page opened from disk.

Keys set stages and move, the saved corrections are applied by review.py
and the statistics change as computed by hand; recording text that reads
like markup shows as text and runs nothing. Skipped only when no Chromium
can be found (``run.sh setup`` installs Debian's package; ``CHROMIUM=PATH``
names another), and the skip says so in capitals at the end of the run
(conftest.py's ``pytest_terminal_summary``, whatever ``-q`` or ``-r``
say).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from sleepstaging.scoring import corrections
from sleepstaging.scoring import review_page
from conftest import run_script
from review_night import make_night
from test_review import STAGES_12, read_rows

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"  # CHROMIUM: another browser
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="NO PLAYWRIGHT: THE BROWSER TESTS OF THE REVIEW PAGE DID NOT RUN (bash run.sh setup)")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"NO CHROMIUM AT {CHROMIUM}: THE BROWSER TESTS OF THE REVIEW PAGE DID NOT RUN (apt-get install "
                f"chromium, or name one with CHROMIUM=PATH)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


def open_page(browser, path: Path):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1300, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("request", lambda request: errors.append(f"request {request.url[:60]}")
            if not request.url.startswith(("file:", "data:", "blob:")) else None)
    page.goto(path.as_uri())
    page.wait_for_function("window.reviewReadyMs !== undefined")
    return context, page, errors


@pytest.mark.slow
def test_keys_save_and_apply_change_the_statistics_as_by_hand(browser, tmp_path):
    scored = tmp_path / "scored"
    night = make_night(scored, "A", STAGES_12)
    page_path = review_page.write_review_page(scored / "A", "A", night["models"], night["images"])
    corrections.rebuild_statistics_table(scored)
    context, page, errors = open_page(browser, page_path)
    assert page.text_content("#epoch-title").startswith("Epoch 2 (2 of 12)")  # the first to check: 0.4 confident
    page.keyboard.press("2")            # epoch 2: Wake -> N2
    page.keyboard.press("n")            # the next to check: epoch 5
    assert page.text_content("#epoch-title").startswith("Epoch 5 ")
    page.keyboard.press("w")            # epoch 5: N2 -> Wake
    page.keyboard.press("ArrowRight")   # epoch 6
    page.keyboard.press("R")            # epoch 6: N2 -> REM
    assert "Stage: REM (corrected; the machine said N2)" in page.text_content("#stage-now")
    page.fill("#scorer", "JD")
    with page.expect_download() as info:
        page.click("#save")
    download = info.value
    assert download.suggested_filename == "A-corrections.csv"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    context.close()
    assert errors == []
    rows = read_rows(saved)
    assert [(r["recording_id"], r["epoch"], r["stage_before"], r["stage_after"], r["scorer"]) for r in rows] == [
        ("A", "2", "Wake", "N2", "JD"), ("A", "5", "N2", "Wake", "JD"), ("A", "6", "N2", "REM", "JD")]
    run_script("review.py", "apply", "--scored", scored, saved)
    # W N2 N1 N2 W REM N3 N3 N2 REM REM W: sleep from epoch 2 to 11, Wake at 5 inside it
    statistics = read_rows(scored / "sleep_statistics.csv")[0]
    assert {key: float(statistics[key]) for key in ("TST", "SOL", "WASO", "REM", "N2", "Lat_REM", "awakenings")} == {
        "TST": 4.5, "SOL": 0.5, "WASO": 0.5, "REM": 1.5, "N2": 1.5, "Lat_REM": 2.5, "awakenings": 1.0}


def test_recording_text_shows_as_text_and_runs_nothing(browser, tmp_path):
    recording_id = "<img src=x onerror=window.pwned=1>"
    night = make_night(tmp_path, recording_id, STAGES_12)
    table_path = tmp_path / recording_id / f"{recording_id}-hypnogram.csv"
    rows = read_rows(table_path)
    payload = "<script>window.pwned=2</script><img src=y onerror=window.pwned=3>"
    rows[1].update(quality="flagged", flat_signals=payload)
    with open(table_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    statistics_path = tmp_path / recording_id / f"{recording_id}-statistics.json"
    statistics = json.loads(statistics_path.read_text())
    statistics_path.write_text(json.dumps(dict(statistics, quality_warnings=payload)))
    page_path = review_page.write_review_page(tmp_path / recording_id, recording_id, night["models"], night["images"])
    context, page, errors = open_page(browser, page_path)
    assert page.evaluate("window.pwned") is None
    assert page.text_content("#title") == f"Review of {recording_id}"
    assert page.text_content("#quality") == f"Signal quality: flagged ({payload})"
    assert payload in page.text_content("#warnings")
    assert page.evaluate("document.querySelectorAll('img').length") == 3  # the page's own three
    assert page.evaluate("document.querySelectorAll('script').length") == 2
    context.close()
    assert errors == []


@pytest.mark.slow
def test_the_hmm_ordering_shows_its_posterior_and_starts_with_the_epoch_it_doubts_most(browser, tmp_path):
    import numpy as np

    night = make_night(tmp_path, "H", STAGES_12)
    posterior = np.full((12, 5), 0.01)
    posterior[np.arange(12), STAGES_12] = 0.96
    posterior[7] = [0.01, 0.01, 0.5, 0.47, 0.01]  # epoch 8 (N3 assigned): the hmm gives its stage 0.47
    page_path = review_page.write_review_page(tmp_path / "H", "H", night["models"], night["images"], 0.8, "hmm",
                                              posterior)
    context, page, errors = open_page(browser, page_path)
    assert page.text_content("#epoch-title").startswith("Epoch 8 (8 of 12)")
    assert "ordered by the hmm's doubt" in page.text_content("#summary")
    assert "calibrated (temperature 0.80)" in page.text_content("#summary")
    rows = page.eval_on_selector_all("#probs-body tr", "rows => rows.map(r => r.textContent)")
    assert rows[1] == "hmm posterior1 %1 %50 %47 %1 %N2" and rows[0].startswith("blend")
    assert "hmm 47 %" in page.text_content("#check-list")
    if os.environ.get("REVIEW_SCREENSHOT"):  # docs/review_page.png: REVIEW_SCREENSHOT=docs/review_page.png pytest -k hmm
        page.screenshot(path=os.environ["REVIEW_SCREENSHOT"], full_page=True)
    context.close()
    assert errors == []


@pytest.mark.slow
def test_a_nine_hour_night_paints_quickly(browser, tmp_path):
    """1,100 epochs with their images: the page's size and the browser's time to first paint (printed)."""
    stages = [0] * 20 + [1, 2, 2, 2, 3, 3, 3, 2, 4, 4] * 107 + [0] * 10
    night = make_night(tmp_path, "NIGHT", stages)
    page_path = review_page.write_review_page(tmp_path / "NIGHT", "NIGHT", night["models"], night["images"])
    size = page_path.stat().st_size
    assert size <= 10_000_000
    context, page, errors = open_page(browser, page_path)
    paint = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime")
    ready = page.evaluate("window.reviewReadyMs")
    started = page.evaluate("performance.now()")
    for _ in range(20):
        page.keyboard.press("n")
    moved = page.evaluate("performance.now()") - started
    context.close()
    assert errors == []
    print(f"\n1,100-epoch review page: {size / 1e6:.2f} MB; first contentful paint {paint:.0f} ms, "
          f"script ready {ready:.0f} ms; 20 jumps to the next epoch to check {moved:.0f} ms")
