"""A self-contained interactive head view: one HTML file with its data, script and font inline.

Pick a probe, a layer and a head (or all heads); hover over a token to see where it attends, click
it to pin it (click it again to unpin). The overview draws every layer x head as a thumbnail
heatmap; clicking one opens that head: a labelled heatmap with a colour scale, a readout of the
weight under the mouse and the head's metrics against their chance values. No network: nothing is
loaded from anywhere, so it works in wandb, offline, or as a local file. Weights are stored as bytes
(0..255), about 1 byte per weight; Chinese is drawn by a subset of Noto Sans CJK embedded in the
page, so it shows as characters on a machine without a CJK font.
"""
from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import re

import numpy as np

FONT_NAME = "Head view CJK"  # the CSS family of the embedded subset

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
__FONT_FACE__
body { font-family: "DejaVu Sans", "__FONT_NAME__", "Noto Sans CJK SC", sans-serif; margin: 12px; color: #222; }
select { font: inherit; }  /* form controls default to the system font, which may have no CJK */
h3 { margin: 0 0 8px; overflow-wrap: anywhere; }
h4 { margin: 14px 0 6px; }
#controls { display: flex; flex-wrap: wrap; gap: 4px 14px; }
.hint { color: #666; margin: 6px 0; }
.row { display: flex; flex-wrap: wrap; align-items: baseline; gap: 2px; margin: 6px 0; line-height: 1.9; }
.head { width: 2.6em; font-weight: bold; }
.tok { padding: 0 3px; border-radius: 3px; cursor: pointer; border: 1px solid #ddd; max-width: 100%; overflow-wrap: anywhere; }
.tok.query { outline: 2px solid #000; }
.tok.pinned { outline: 3px solid #c00; }
.tok.future { color: #bbb; }
#grid { display: grid; gap: 3px; max-width: 720px; align-items: center; }
#grid .label { font-size: 12px; text-align: center; color: #555; }
#grid canvas { width: 100%; aspect-ratio: 1; image-rendering: pixelated; border: 2px solid transparent; cursor: pointer; box-sizing: border-box; }
#grid canvas.selected { border-color: #c00; }
#detail-body { display: flex; flex-wrap: wrap; gap: 12px 20px; align-items: flex-start; }
#heatmap { display: grid; grid-template-columns: 6em auto; }
.qlabels div, .klabels div { overflow: hidden; white-space: nowrap; text-overflow: ellipsis; color: #444; }
.qlabels div { text-align: right; padding-right: 3px; }
.klabels { display: flex; align-items: flex-end; }
.klabels div { writing-mode: vertical-rl; text-align: end; max-height: 5em; }
.qlabels div.on, .klabels div.on { color: #c00; font-weight: bold; }
#map { image-rendering: pixelated; cursor: crosshair; }
#readout { min-height: 1.4em; font-family: monospace, "__FONT_NAME__"; margin-bottom: 8px; overflow-wrap: anywhere; }
#legend { display: flex; align-items: center; gap: 6px; font-size: 12px; margin-bottom: 10px; }
#legend .bar { width: 140px; height: 12px; background: linear-gradient(to right, __GRADIENT__); }
#metrics { border-collapse: collapse; font-size: 13px; }
#metrics th, #metrics td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
</style></head>
<body>
<h3>__TITLE__</h3>
<div id="controls"><label>probe <select id="probe"></select></label><label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label></div>
<div class="hint">Hover over a token to see where it attends (darker = more weight); click it to pin it, click it again to unpin.</div>
<div id="status" class="hint"></div>
<div id="tokens"></div>
<h4>Every head (rows: layers, columns: heads) &mdash; click one to open it</h4>
<div id="grid"></div>
<section id="detail" hidden>
<h4 id="detail-title"></h4>
<div id="detail-body">
<div id="heatmap"><div></div><div class="klabels" id="keys"></div><div class="qlabels" id="queries"></div><canvas id="map"></canvas></div>
<div><div id="readout"></div>
<div id="legend"><span>0</span><span class="bar"></span><span>1</span><span>attention weight (query row &rarr; key column)</span></div>
<table id="metrics"></table></div>
</div>
</section>
<script>
const DATA = __DATA__;
const VIRIDIS = __VIRIDIS__;
const $ = (id) => document.getElementById(id);
const decoded = {};
const state = { hover: null, pinned: null };

function weights(p) {
  if (!decoded[p]) {
    const raw = atob(DATA.probes[p].weights), bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    decoded[p] = bytes;
  }
  return decoded[p];
}
function weight(p, l, h, i, j) {
  const T = DATA.probes[p].labels.length;
  return weights(p)[((l * DATA.n_head + h) * T + i) * T + j] / 255;
}
function interpolate(x) {  // linear between the stops of matplotlib's viridis, as in the report's PNGs
  const s = x * (VIRIDIS.length - 1), k = Math.min(Math.floor(s), VIRIDIS.length - 2), f = s - k;
  return VIRIDIS[k].map((c, n) => Math.round(c + f * (VIRIDIS[k + 1][n] - c)));
}
const PALETTE = [...Array(256).keys()].map((b) => interpolate(b / 255));  // weights are bytes: one colour each
function viridis(x) { return PALETTE[Math.round(x * 255)]; }
function headColor(h, alpha) { return `hsla(${Math.round(h * 360 / DATA.n_head)}, 75%, 45%, ${alpha})`; }
function selection() {
  const p = +$("probe").value, l = +$("layer").value, head = $("head").value;
  return { p, l, heads: head === "all" ? [...Array(DATA.n_head).keys()] : [+head], single: head !== "all" };
}
function currentQuery(T) { return state.pinned ?? state.hover ?? T - 1; }
function fill(select, items) {
  select.replaceChildren(...items.map(([value, text]) => new Option(text, value)));
}
function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

// token view: built once per probe/layer/head choice, then only recoloured, so the element under
// the mouse survives a hover and a click on it always lands
function buildTokens() {
  const { p, heads } = selection();
  $("tokens").replaceChildren(...heads.map((h) => {
    const row = element("div", "row");
    row.dataset.h = h;
    const name = element("span", "head", `H${h}`);
    name.style.color = headColor(h, 1);
    row.append(name, ...DATA.probes[p].labels.map((label, j) => {
      const tok = element("span", "tok", label);
      tok.dataset.j = j;
      return tok;
    }));
    return row;
  }));
}
function paintTokens() {
  const { p, l } = selection(), labels = DATA.probes[p].labels, q = currentQuery(labels.length);
  for (const row of $("tokens").children) {
    const h = +row.dataset.h;
    for (const tok of row.querySelectorAll(".tok")) {
      const j = +tok.dataset.j, a = j <= q ? weight(p, l, h, q, j) : 0;
      tok.style.background = headColor(h, a);
      tok.title = j <= q ? `weight ${a.toFixed(3)}` : "future: masked";
      tok.classList.toggle("query", j === q);
      tok.classList.toggle("pinned", j === state.pinned);
      tok.classList.toggle("future", j > q);
    }
  }
  $("status").textContent = `query ${q} '${labels[q]}'` +
    (state.pinned === null ? "" : " (pinned: click it again to unpin)");
}
function onTokenOver(event) {
  const tok = event.target.closest(".tok");
  if (!tok || state.pinned !== null || state.hover === +tok.dataset.j) return;
  state.hover = +tok.dataset.j;
  refreshQuery();
}
function onTokenClick(event) {
  const tok = event.target.closest(".tok");
  if (tok) togglePin(+tok.dataset.j);
}
function togglePin(j) {
  state.pinned = state.pinned === j ? null : j;
  state.hover = j;
  refreshQuery();
}
function refreshQuery() { paintTokens(); drawHeatmap(); }

// overview: one thumbnail per layer x head for the selected probe, one canvas pixel per weight
function buildGrid() {
  const { p } = selection(), T = DATA.probes[p].labels.length, grid = $("grid");
  grid.style.gridTemplateColumns = `2.2em repeat(${DATA.n_head}, minmax(0, 72px))`;
  const cells = [element("span")];
  for (let h = 0; h < DATA.n_head; h++) cells.push(element("span", "label", `H${h}`));
  for (let l = 0; l < DATA.n_layer; l++) {
    cells.push(element("span", "label", `L${l}`));
    for (let h = 0; h < DATA.n_head; h++) {
      const canvas = element("canvas", "thumb");
      Object.assign(canvas.dataset, { l, h });
      canvas.title = `L${l} H${h}: click to open`;
      canvas.width = canvas.height = T;
      drawPixels(canvas, p, l, h, T);
      cells.push(canvas);
    }
  }
  grid.replaceChildren(...cells);
  markThumbnail();
}
function drawPixels(canvas, p, l, h, T) {
  const ctx = canvas.getContext("2d"), image = ctx.createImageData(T, T);
  for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) {
    const rgb = j <= i ? viridis(weight(p, l, h, i, j)) : [244, 244, 244], k = 4 * (i * T + j);
    image.data.set([...rgb, 255], k);
  }
  ctx.putImageData(image, 0, 0);
}
function markThumbnail() {
  const { l, heads, single } = selection();
  for (const thumb of $("grid").querySelectorAll("canvas")) {
    thumb.classList.toggle("selected", single && +thumb.dataset.l === l && +thumb.dataset.h === heads[0]);
  }
}
function onThumbnailClick(event) {
  const thumb = event.target.closest("canvas.thumb");
  if (!thumb) return;
  $("layer").value = thumb.dataset.l;
  $("head").value = thumb.dataset.h;
  onHeadChange();
  $("detail").scrollIntoView({ block: "nearest" });
}

// the opened head: labelled heatmap, colour scale, readout and metrics table
function cellSize(T) {  // fit the page's width, and leave room beside it for the metrics on a wide one
  const room = document.documentElement.clientWidth - 24 - $("queries").offsetWidth - 8;
  return Math.max(4, Math.min(18, Math.floor(Math.min(room, 560) / T)));
}
function renderDetail() {
  const { p, l, heads, single } = selection();
  $("detail").hidden = !single;
  if (!single) return;
  const labels = DATA.probes[p].labels, T = labels.length, cell = cellSize(T);
  const font = `${Math.max(6, Math.min(12, cell - 2))}px`;
  $("detail-title").textContent = `L${l} H${heads[0]} · ${DATA.probes[p].name}`;
  for (const [id, size] of [["queries", "height"], ["keys", "width"]]) {
    $(id).replaceChildren(...labels.map((label, i) => {
      const div = element("div", "", label);
      Object.assign(div.style, { [size]: `${cell}px`, lineHeight: `${cell}px`, fontSize: font });
      div.title = `${i}: ${label}`;
      return div;
    }));
  }
  const canvas = $("map");
  canvas.width = canvas.height = T * cell;
  canvas.dataset.cell = cell;
  $("readout").textContent = "hover over the heatmap to read a weight; click a row to pin that query";
  drawHeatmap();
  renderMetrics(l, heads[0]);
}
function drawHeatmap() {
  const { p, l, heads, single } = selection();
  if (!single) return;
  const T = DATA.probes[p].labels.length, canvas = $("map"), cell = +canvas.dataset.cell, q = currentQuery(T);
  const ctx = canvas.getContext("2d");
  for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) {
    ctx.fillStyle = j <= i ? `rgb(${viridis(weight(p, l, heads[0], i, j))})` : "#f4f4f4";
    ctx.fillRect(j * cell, i * cell, cell, cell);
  }
  ctx.strokeStyle = "#c00";
  ctx.lineWidth = 2;
  ctx.strokeRect(1, q * cell + 1, T * cell - 2, cell - 2);
}
function heatmapCell(event) {
  const cell = +$("map").dataset.cell, T = DATA.probes[selection().p].labels.length;
  const clamp = (v) => Math.max(0, Math.min(T - 1, Math.floor(v / cell)));
  return [clamp(event.offsetY), clamp(event.offsetX)];
}
function onHeatmapMove(event) {
  const { p, l, heads } = selection(), labels = DATA.probes[p].labels, [i, j] = heatmapCell(event);
  $("readout").textContent = j <= i
    ? `query '${labels[i]}' -> key '${labels[j]}': ${weight(p, l, heads[0], i, j).toFixed(3)}`
    : `query '${labels[i]}' -> key '${labels[j]}': masked (future)`;
  $("queries").querySelectorAll("div").forEach((d, k) => d.classList.toggle("on", k === i));
  $("keys").querySelectorAll("div").forEach((d, k) => d.classList.toggle("on", k === j));
}
function onHeatmapClick(event) { togglePin(heatmapCell(event)[0]); }
function formatNumber(v) { return v === null ? "–" : Number(v).toPrecision(3); }
function renderMetrics(l, h) {
  const names = Object.keys(DATA.metrics), table = $("metrics");
  table.hidden = names.length === 0;
  if (!names.length) return;
  const groups = [...new Set(names.flatMap((m) => Object.keys(DATA.metrics[m])))];
  const header = element("tr");
  header.append(element("th", "", "metric"), ...groups.map((g) => element("th", "", g)));
  table.replaceChildren(header, ...names.map((m) => {
    const tr = element("tr");
    tr.append(element("th", "", m), ...groups.map((g) => {
      const values = DATA.metrics[m][g], chance = (DATA.baselines[m] || {})[g];
      const text = values ? formatNumber(values[l][h]) : "–";
      return element("td", "", chance === undefined || !values ? text : `${text} (chance ${formatNumber(chance)})`);
    }));
    return tr;
  }));
}

function updateTitle() { document.title = `${DATA.title} · ${DATA.probes[selection().p].name}`; }
function onHeadChange() {  // a pinned query stays: compare what the same token does in other heads
  buildTokens();
  paintTokens();
  markThumbnail();
  renderDetail();
}
function onProbeChange() {
  state.hover = state.pinned = null;  // other tokens
  updateTitle();
  buildGrid();
  onHeadChange();
}

fill($("probe"), DATA.probes.map((probe, p) => [p, probe.name]));
fill($("layer"), [...Array(DATA.n_layer).keys()].map((l) => [l, `L${l}`]));
fill($("head"), [["all", "all"], ...[...Array(DATA.n_head).keys()].map((h) => [h, `H${h}`])]);
$("probe").addEventListener("change", onProbeChange);
$("layer").addEventListener("change", onHeadChange);
$("head").addEventListener("change", onHeadChange);
$("tokens").addEventListener("mouseover", onTokenOver);
$("tokens").addEventListener("click", onTokenClick);
$("grid").addEventListener("click", onThumbnailClick);
$("map").addEventListener("mousemove", onHeatmapMove);
$("map").addEventListener("click", onHeatmapClick);
window.addEventListener("resize", renderDetail);
onProbeChange();
</script>
</body></html>
"""


@functools.cache
def viridis_stops(n: int = 9) -> list[list[int]]:
    """matplotlib's viridis at n evenly spaced points, as RGB: the page interpolates between them,
    so its heatmaps read like the report's PNGs."""
    from matplotlib import colormaps

    return np.round(colormaps["viridis"](np.linspace(0, 1, n))[:, :3] * 255).astype(int).tolist()


@functools.cache
def cjk_face() -> bytes:
    """The Simplified Chinese face of the pip-installed Noto Sans CJK collection as one OpenType
    (CFF) font, without the layout and vertical tables a subset for the page never needs. Reading
    the 19 MB collection is the slow part, so it happens once per process."""
    import noto_cjk_sans_otc
    from fontTools.ttLib import TTCollection

    collection = TTCollection(str(noto_cjk_sans_otc.FONT_PATH), lazy=True)
    face = next(f for f in collection.fonts
                if "SC" in f["name"].getDebugName(1).split() and "Mono" not in f["name"].getDebugName(1))
    for tag in ("GSUB", "GPOS", "GDEF", "BASE", "VORG", "vhea", "vmtx"):
        if tag in face:
            del face[tag]
    buffer = io.BytesIO()
    face.save(buffer)
    return buffer.getvalue()


def embedded_font(text: str) -> str:
    """An @font-face rule holding the glyphs of the characters of `text` that DejaVu Sans lacks and
    Noto Sans CJK SC has, or "" when DejaVu Sans draws all of them."""
    from heads.plots import (
        latin_code_points,  # the Latin font the PNGs draw with, DejaVu Sans
    )

    return font_face(frozenset(ord(ch) for ch in text) - latin_code_points())


@functools.cache
def font_face(code_points: frozenset[int]) -> str:
    """embedded_font's rule for these code points. Cached on them, not on the page's text: a run's
    probes, and so its pages' Chinese, stay the same from report to report while the title's step
    changes, and subsetting takes about a second."""
    if not code_points:
        return ""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    font = TTFont(io.BytesIO(cjk_face()), lazy=True)
    options = subset.Options(hinting=False, desubroutinize=True, layout_features=[])  # smaller; hints are for print
    try:
        import brotli  # noqa: F401  woff2 compresses with brotli, which is not always installed
        options.flavor, mime = "woff2", "font/woff2"
    except ImportError:
        mime = "font/otf"
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=code_points & set(font.getBestCmap()))
    subsetter.subset(font)
    buffer = io.BytesIO()
    font.save(buffer)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'@font-face {{ font-family: "{FONT_NAME}"; src: url(data:{mime};base64,{encoded}); }}'


def nested(values: np.ndarray) -> list | float | None:
    """An array as nested lists for JSON, rounded, with NaN and inf as null."""
    return [nested(v) for v in values] if values.ndim else (round(float(values), 4) if math.isfinite(values) else None)


def head_view_html(probes: list[tuple[str, list[str], np.ndarray]], title: str = "Attention head view",
                   metrics: dict[str, dict[str, np.ndarray]] | None = None,
                   baselines: dict[str, dict[str, float]] | None = None) -> str:
    """The HTML page of the head view.

    probes: (name, token labels, weights (n_layer, n_head, T, T)) per probe, all of one model.
    metrics: metric -> group (e.g. "en", "zh", "all") -> (n_layer, n_head) values, shown for the
    opened head; baselines: metric -> group -> the value uniform causal attention would score.
    """
    n_layer, n_head = probes[0][2].shape[:2]
    for name, labels, weights in probes:
        if weights.shape != (n_layer, n_head, len(labels), len(labels)):
            raise ValueError(f"probe {name!r}: weights {weights.shape} are not (n_layer, n_head, T, T) = "
                             f"({n_layer}, {n_head}, {len(labels)}, {len(labels)})")
    metrics, baselines = metrics or {}, baselines or {}
    for metric, groups in metrics.items():
        for group, values in groups.items():
            if np.shape(values) != (n_layer, n_head):
                raise ValueError(f"metric {metric!r}, group {group!r}: {np.shape(values)} is not (n_layer, n_head) "
                                 f"= ({n_layer}, {n_head})")
    data = {
        "title": title,
        "n_layer": n_layer,
        "n_head": n_head,
        "probes": [
            {
                "name": name,
                "labels": list(labels),
                "weights": base64.b64encode(np.round(np.clip(weights, 0, 1) * 255).astype(np.uint8).tobytes()).decode("ascii"),
            }
            for name, labels, weights in probes
        ],
        "metrics": {m: {g: nested(np.asarray(v, dtype=float)) for g, v in groups.items()} for m, groups in metrics.items()},
        "baselines": {m: {g: nested(np.asarray(v, dtype=float)) for g, v in groups.items()} for m, groups in baselines.items()},
    }
    # every "<" escaped: no text (a probe called "</script>") can end the script or open a comment
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    shown = title + "".join(name + "".join(labels) for name, labels, _ in probes) + "".join(metrics)
    shown += "".join(g for groups in metrics.values() for g in groups)
    parts = {
        "FONT_FACE": embedded_font("".join(sorted(set(shown)))),
        "FONT_NAME": FONT_NAME,
        "GRADIENT": ", ".join(f"rgb({r},{g},{b})" for r, g, b in viridis_stops()),
        "VIRIDIS": json.dumps(viridis_stops()),
        "TITLE": html.escape(title),
        "DATA": payload,
    }
    return re.sub(r"__([A-Z_]+)__", lambda m: parts[m.group(1)], PAGE)  # one pass: inserted text is never rescanned
