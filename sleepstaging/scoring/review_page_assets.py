"""The review page's HTML, CSS and script (review_page.py fills in the night's data).

The script reads the night from the JSON block ``#night-data`` and builds
every element that shows recording data with ``textContent`` (never
``innerHTML``), so an ID, label or flag that reads like markup shows as text.
Stages are always written by name, so the page reads without colour.
"""
from __future__ import annotations

PAGE_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>review</title>
<style>
body { font: 14px/1.35 system-ui, sans-serif; margin: 0 12px; color: #111; background: #fff; }
h1 { font-size: 18px; margin: 8px 0 2px; } h2 { font-size: 15px; margin: 10px 0 4px; }
#summary, #warnings { margin: 2px 0; } #warnings { font-weight: bold; }
#hypnogram { width: 100%; height: 200px; border: 1px solid #999; cursor: crosshair; display: block; }
main { display: flex; gap: 14px; align-items: flex-start; }
#epoch-panel { flex: 1 1 auto; min-width: 0; } aside { flex: 0 0 300px; }
#images { display: flex; gap: 6px; align-items: flex-end; }
figure { margin: 0; text-align: center; } figcaption { font-size: 12px; }
#img-main { width: 480px; height: 270px; border: 2px solid #000; image-rendering: auto; }
.side img { width: 240px; height: 135px; border: 1px solid #777; }
table { border-collapse: collapse; margin-top: 6px; } td, th { border: 1px solid #aaa; padding: 2px 6px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.top { font-weight: bold; text-decoration: underline; }
#check-list { max-height: 320px; overflow-y: auto; padding-left: 28px; margin: 4px 0; }
#check-list button { font: inherit; text-align: left; width: 100%; background: none; border: 1px solid transparent; cursor: pointer; }
#check-list button.current { border-color: #000; font-weight: bold; }
#stage-now { font-size: 16px; font-weight: bold; }
kbd { border: 1px solid #888; border-radius: 3px; padding: 0 4px; background: #f4f4f4; }
</style>
</head>
<body>
<header><h1 id="title"></h1><p id="summary"></p><p id="warnings"></p></header>
<canvas id="hypnogram" width="1200" height="200" aria-label="hypnogram: click an epoch to select it"></canvas>
<main>
<section id="epoch-panel">
<h2 id="epoch-title"></h2>
<p id="stage-now"></p>
<div id="images">
<figure class="side"><img id="img-prev" alt="previous epoch"><figcaption id="cap-prev"></figcaption></figure>
<figure><img id="img-main" alt="selected epoch"><figcaption id="cap-main"></figcaption></figure>
<figure class="side"><img id="img-next" alt="next epoch"><figcaption id="cap-next"></figcaption></figure>
</div>
<table id="probs"><thead><tr id="probs-head"></tr></thead><tbody id="probs-body"></tbody></table>
<p id="quality"></p>
</section>
<aside>
<h2>To check first</h2>
<p id="progress"></p>
<ol id="check-list"></ol>
<h2>Corrections</h2>
<label>Scorer <input id="scorer" size="12" autocomplete="off"></label>
<button id="save" type="button">Save corrections</button>
<p id="saved"></p>
<ul id="changes"></ul>
<h2>Keys</h2>
<p><kbd>W</kbd> <kbd>1</kbd> <kbd>2</kbd> <kbd>3</kbd> <kbd>R</kbd> (or <kbd>0</kbd>-<kbd>4</kbd>): set Wake, N1, N2, N3, REM.
<kbd>&larr;</kbd> <kbd>&rarr;</kbd>: previous, next epoch. <kbd>N</kbd>: next epoch to check, <kbd>P</kbd>: the one before.
<kbd>U</kbd>: undo this epoch's correction.</p>
</aside>
</main>
@@DATA@@
<script>
"use strict";
const D = JSON.parse(document.getElementById("night-data").textContent);
const N = D.epoch.length, S = D.stages, original = D.stage.slice();
const stage = D.stage.slice(), changes = new Map(), seen = new Set();
const LIST_LENGTH = Math.min(N, Math.max(20, Math.ceil(0.1 * N)));
const ROWS = ["Wake", "REM", "N1", "N2", "N3"];  // top to bottom, the clinical hypnogram
const KEYS = {w: 0, W: 0, "0": 0, "1": 1, "2": 2, "3": 3, r: 4, R: 4, "4": 4};
let current = D.order.length ? D.order[0] : 0, checkPos = 0, dirty = false;
const $ = (id) => document.getElementById(id);
const pct = (p) => Math.round(100 * p) + " %";
const argmax = (row) => row.reduce((best, v, i) => (v > row[best] ? i : best), 0);
const rank = new Int32Array(N); D.order.forEach((epoch, i) => { rank[epoch] = i; });
const ORDERED_BY = {blend: "the blend's doubt (1 - its largest probability)", disagreement: "the models' disagreement",
  "blend+disagreement": "the mean of the blend's doubt and the models' disagreement",
  hmm: "the hmm's doubt (1 - its posterior of the stage assigned)"};

function text(tag, value, cls) { const el = document.createElement(tag); el.textContent = value; if (cls) el.className = cls; return el; }
function clock(i) { return D.clock[i] ? D.clock[i].slice(11) : (D.onset[i] / 3600).toFixed(2) + " h"; }

function header() {
  document.title = "review " + D.id;
  $("title").textContent = "Review of " + D.id;
  const s = D.statistics, f = (v, u) => (v === null || v === undefined ? "n/a" : v.toFixed(1) + u);
  $("summary").textContent = N + " epochs from " + clock(0) + "; TST " + f(s.TST, " min") + ", SE " + f(s.SE, " %") +
    ", SOL " + f(s.SOL, " min") + ", WASO " + f(s.WASO, " min") + ". Blend probabilities " +
    (D.temperature !== 1 ? "calibrated (temperature " + D.temperature.toFixed(2) + ")" : "as blended (no calibration)") +
    "; models' as they gave them. Epochs to check ordered by " + ORDERED_BY[D.ordering] + ".";
  $("warnings").textContent = D.warnings ? "Signal quality: " + D.warnings : "";
}

function drawHypnogram() {
  const c = $("hypnogram"), g = c.getContext("2d"), W = c.width, H = c.height, left = 46, top = 8, band = 24;
  const x = (i) => left + (W - left - 6) * i / N, y = (s) => top + band * ROWS.indexOf(S[s]) + band / 2;
  g.clearRect(0, 0, W, H); g.font = "12px sans-serif"; g.fillStyle = "#000"; g.textBaseline = "middle";
  ROWS.forEach((name, r) => g.fillText(name, 2, top + band * r + band / 2));
  g.fillStyle = "#ddd"; for (let i = 0; i < N; i++) if (!D.inside[i]) g.fillRect(x(i), top, x(i + 1) - x(i), band * 5);
  g.strokeStyle = "#000"; g.lineWidth = 1.2; g.beginPath();
  for (let i = 0; i < N; i++) { const yy = y(stage[i]); if (i === 0) g.moveTo(x(0), yy); else g.lineTo(x(i), yy); g.lineTo(x(i + 1), yy); }
  g.stroke();
  const base = top + band * 5 + 30, height = H - base - 4;  // the doubt the epochs to check are ordered by
  g.fillStyle = "#000"; g.fillText("doubt", 2, base + height / 2); g.fillStyle = "#777";
  for (let i = 0; i < N; i++) { const d = D.doubt[i]; g.fillRect(x(i), base + height * (1 - d), Math.max(1, x(i + 1) - x(i)), height * d); }
  g.fillStyle = "#000";
  for (let k = 0; k < LIST_LENGTH; k++) { const i = D.order[k]; g.fillRect(x(i), base - 10, Math.max(1, x(i + 1) - x(i)), 6); }
  changes.forEach((_, i) => { g.fillText("x", x(i) - 3, top + band * 5 + 12); });
  g.strokeStyle = "#000"; g.lineWidth = 2; g.beginPath(); g.moveTo(x(current + 0.5), top); g.lineTo(x(current + 0.5), H); g.stroke();
}

function image(id, cap, i) {
  const ok = i >= 0 && i < N;
  $(id).src = ok && D.images[i] ? D.images[i] : "";
  $(cap).textContent = ok ? "epoch " + D.epoch[i] + ", " + clock(i) + ", " + S[stage[i]] : "(none)";
}

function probabilities(i) {
  const head = $("probs-head"), body = $("probs-body");
  head.replaceChildren(text("th", "probabilities"), ...S.map((s) => text("th", s)), text("th", "stage"));
  const rows = [["blend", D.blend[i]]];
  if (D.hmm) rows.push(["hmm posterior", D.hmm[i]]);
  for (const name in D.models) rows.push([name, D.models[name][i]]);
  body.replaceChildren(...rows.map(([name, p]) => {
    const tr = document.createElement("tr"), best = argmax(p);
    tr.append(text("td", name), ...p.map((v, s) => text("td", pct(v), s === best ? "top" : "")), text("td", S[best]));
    return tr;
  }));
}

function select(i) {
  current = Math.max(0, Math.min(N - 1, i)); seen.add(current);
  const change = changes.get(current);
  $("epoch-title").textContent = "Epoch " + D.epoch[current] + " (" + (current + 1) + " of " + N + "), " + clock(current) +
    ", check rank " + (rank[current] + 1) + (D.inside[current] ? "" : ", outside the lights period");
  $("stage-now").textContent = "Stage: " + S[stage[current]] + (change ? " (corrected; the machine said " + S[original[current]] + ")" : " (the machine's)");
  image("img-prev", "cap-prev", current - 1); image("img-main", "cap-main", current); image("img-next", "cap-next", current + 1);
  if (!D.full[current] && D.images[current]) $("cap-main").textContent += " (half-size image)";
  probabilities(current);
  $("quality").textContent = "Signal quality: " + (D.quality[current] || "unknown") + (D.flags[current] ? " (" + D.flags[current] + ")" : "");
  drawHypnogram(); checkList();
}

function checkList() {
  const done = D.order.slice(0, LIST_LENGTH).filter((i) => seen.has(i)).length;
  $("progress").textContent = done + " of the first " + LIST_LENGTH + " seen; " + changes.size + " epoch(s) corrected.";
  $("check-list").replaceChildren(...D.order.slice(0, LIST_LENGTH).map((i) => {
    const li = document.createElement("li"), b = text("button", "epoch " + D.epoch[i] + ", " + clock(i) + ", " + S[stage[i]] +
      ", blend " + pct(Math.max(...D.blend[i])) + (D.hmm ? ", hmm " + pct(D.hmm[i][original[i]]) : "") + (changes.has(i) ? ", corrected" : seen.has(i) ? ", seen" : ""));
    b.type = "button"; if (i === current) b.className = "current"; b.addEventListener("click", () => select(i));
    li.append(b); return li;
  }));
  $("changes").replaceChildren(...[...changes.keys()].sort((a, b) => a - b).map((i) =>
    text("li", "epoch " + D.epoch[i] + ": " + S[original[i]] + " -> " + S[stage[i]])));
}

function setStage(s) {
  stage[current] = s;
  if (s === original[current]) changes.delete(current); else changes.set(current, new Date().toISOString());
  dirty = true; select(current);
}

function csvCell(v) { const t = String(v); return /[",\r\n]/.test(t) ? '"' + t.replace(/"/g, '""') + '"' : t; }

function save() {
  const scorer = $("scorer").value.trim(), rows = [["recording_id", "epoch", "stage_before", "stage_after", "when", "scorer"]];
  [...changes.keys()].sort((a, b) => a - b).forEach((i) => rows.push([D.id, D.epoch[i], S[original[i]], S[stage[i]], changes.get(i), scorer]));
  const blob = new Blob([rows.map((r) => r.map(csvCell).join(",")).join("\n") + "\n"], {type: "text/csv"});
  const a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = D.corrections_file;
  document.body.append(a); a.click(); a.remove(); dirty = false;
  $("saved").textContent = "Saved " + changes.size + " correction(s) as " + a.download + " (apply with review.py apply).";
}

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key in KEYS) setStage(KEYS[e.key]);
  else if (e.key === "ArrowLeft") select(current - 1);
  else if (e.key === "ArrowRight") select(current + 1);
  else if (e.key === "n" || e.key === "N") { do checkPos++; while (checkPos < N - 1 && seen.has(D.order[checkPos])); checkPos = Math.min(checkPos, N - 1); select(D.order[checkPos]); }
  else if (e.key === "p" || e.key === "P") { checkPos = Math.max(0, checkPos - 1); select(D.order[checkPos]); }
  else if (e.key === "u" || e.key === "U") setStage(original[current]);
  else return;
  e.preventDefault();
});
$("hypnogram").addEventListener("click", (e) => {
  const r = e.target.getBoundingClientRect(), left = 46 * r.width / e.target.width;
  select(Math.floor(N * (e.clientX - r.left - left) / (r.width - left - 6 * r.width / e.target.width)));
});
$("save").addEventListener("click", save);
window.addEventListener("beforeunload", (e) => { if (dirty) e.preventDefault(); });
header(); select(current); checkPos = 0;
window.reviewReadyMs = performance.now();
</script>
</body>
</html>
"""
