"""A scored cohort's index page (``<out>/index.html``): every night, its statistics, doubt, warnings and review.

One static file, opened from disk: a row per scored night (TST, SE, SOL,
WASO, the share of uncertain epochs, signal-quality warnings, whether it has
been reviewed and how many epochs a scorer changed, a link to its review
page) and a row per night that failed (its step and reason). As on the
review page, recording data is JSON and the DOM is built with
``textContent``; a link is relative to the index (a merged cohort's nights
stay in their shards' folders), each path segment percent-encoded.
"""
from __future__ import annotations

import csv
import json
import os
import urllib.parse
from pathlib import Path


from sleepstaging.scoring import review_page
from sleepstaging import script_io
INDEX_NAME = "index.html"
UNCERTAIN_BELOW = 0.6  # an epoch is uncertain when the blend's largest probability (its table's: calibrated) is below it
SHOWN_STATISTICS = ("TST", "SE", "SOL", "WASO")


def page_link(page: Path, index_folder: Path) -> str:
    """The relative URL of a review page from the index's folder, each path segment percent-encoded."""
    relative = Path(os.path.relpath(page, index_folder))
    return "/".join(urllib.parse.quote(part, safe="") for part in relative.parts)


def night_row(folder: Path, recording_id: str, index_folder: Path | None = None) -> dict:
    """One night's row (its folder ``folder/<ID>``): statistics, uncertain share, warnings, review state, page link.

    ``index_folder`` is where the index is written (default ``folder``); the
    link to the night's review page is relative to it, empty when the night has none.
    """
    from sleepstaging.scoring import corrections
    files = corrections.night_files(folder, recording_id)
    statistics = json.loads(files["statistics"].read_text())
    table = review_page.read_hypnogram_table(files["table"])
    uncertain = float((table["probabilities"].max(axis=1) < UNCERTAIN_BELOW).mean()) if len(table["epoch"]) else 0.0
    changed = 0
    if files["log"].is_file():
        with open(files["log"], newline="", encoding="utf-8") as handle:
            changed = len({row["epoch"] for row in csv.DictReader(handle)})
    return {"id": recording_id, "epochs": len(table["epoch"]),
            **{key: statistics.get(key) for key in SHOWN_STATISTICS},
            "uncertain": round(uncertain, 4), "warnings": statistics.get("quality_warnings") or "",
            "reviewed": files["log"].is_file(), "changed": changed,
            "page": page_link(files["page"], folder if index_folder is None else index_folder)
            if files["page"].is_file() else ""}


def write_index(folder: Path, failures: list[dict] | None = None, nights: dict | None = None) -> Path:
    """Write ``<folder>/index.html`` from scored nights and the failures table's rows.

    ``nights``: ID -> the folder that holds the night's ``<ID>/`` (a merged
    cohort's nights stay in their shards' folders); default every scored
    night in ``folder``. ``failures``: default ``folder``'s failures table.
    """
    from sleepstaging.scoring import cohort
    if failures is None:
        failures = list(cohort.read_failures(folder).values()) if (folder / cohort.FAILURES).is_file() else []
    if nights is None:
        nights = dict.fromkeys(cohort.scored_nights(folder), folder)
    data = {"nights": [night_row(nights[night], night, folder) for night in sorted(nights)],
            "failures": [{key: row.get(key, "") for key in ("recording_id", "step", "reason")} for row in failures],
            "uncertain_below": UNCERTAIN_BELOW}
    path = folder / INDEX_NAME
    with script_io.atomic_path(path) as tmp:
        tmp.write_text(INDEX_TEMPLATE.replace("@@DATA@@", review_page.embedded_json(data)), encoding="utf-8")
    return path


INDEX_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>scored nights</title>
<style>
body { font: 14px/1.35 system-ui, sans-serif; margin: 8px 14px; }
table { border-collapse: collapse; } td, th { border: 1px solid #aaa; padding: 2px 8px; text-align: right; }
td:first-child, th:first-child, td.text { text-align: left; }
</style></head><body>
<h1>Scored nights</h1>
<p id="summary"></p>
<table><thead><tr><th>night</th><th>epochs</th><th>TST (min)</th><th>SE (%)</th><th>SOL (min)</th><th>WASO (min)</th>
<th id="uncertain-head"></th><th>quality warnings</th><th>reviewed</th></tr></thead><tbody id="nights"></tbody></table>
<h2>Failed</h2>
<table><thead><tr><th>night</th><th>step</th><th>reason</th></tr></thead><tbody id="failures"></tbody></table>
<script type="application/json" id="cohort-data">@@DATA@@</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("cohort-data").textContent);
const cell = (value, cls) => { const td = document.createElement("td"); td.textContent = value; if (cls) td.className = cls; return td; };
const num = (v) => (v === null || v === undefined ? "n/a" : v.toFixed(1));
document.getElementById("uncertain-head").textContent = "uncertain (max p < " + D.uncertain_below + ")";
document.getElementById("summary").textContent = D.nights.length + " night(s) scored, " +
  D.nights.filter((n) => n.reviewed).length + " reviewed, " + D.failures.length + " failed.";
document.getElementById("nights").replaceChildren(...D.nights.map((n) => {
  const tr = document.createElement("tr"), first = document.createElement("td");
  if (n.page) { const a = document.createElement("a"); a.href = n.page; a.textContent = n.id; first.append(a); }
  else first.textContent = n.id;
  tr.append(first, cell(n.epochs), cell(num(n.TST)), cell(num(n.SE)), cell(num(n.SOL)), cell(num(n.WASO)),
    cell(Math.round(100 * n.uncertain) + " %"), cell(n.warnings || "none", "text"),
    cell(n.reviewed ? "yes, " + n.changed + " epoch(s) changed" : "no", "text"));
  return tr;
}));
document.getElementById("failures").replaceChildren(...D.failures.map((f) => {
  const tr = document.createElement("tr"); tr.append(cell(f.recording_id), cell(f.step, "text"), cell(f.reason, "text")); return tr;
}));
</script></body></html>
"""
