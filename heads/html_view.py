"""A self-contained interactive head view: one HTML file with its data and script inline.

Pick a probe, a layer and a head (or all heads); hover over a token to see where it attends,
click to pin it. With one head selected, its full heatmap is drawn too (click a row to pick
that query). No network: nothing is loaded from anywhere, so it works in wandb, offline, or as a
local file. Weights are stored as bytes (0..255), about 1 byte per weight.
"""
from __future__ import annotations

import base64
import html
import json

import numpy as np

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font-family: "DejaVu Sans", "Noto Sans CJK SC", sans-serif; margin: 12px; color: #222; }
#controls select { margin-right: 14px; }
.row { margin: 6px 0; line-height: 2.1; }
.head { display: inline-block; width: 3.2em; font-weight: bold; }
.tok { padding: 2px 3px; margin: 1px; border-radius: 3px; cursor: pointer; border: 1px solid #ddd; white-space: pre; }
.tok.query { outline: 2px solid #000; }
.tok.future { color: #bbb; }
#hint { color: #666; margin: 8px 0; }
canvas { margin-top: 10px; image-rendering: pixelated; border: 1px solid #ccc; }
</style></head>
<body>
<h3>__TITLE__</h3>
<div id="controls">probe <select id="probe"></select> layer <select id="layer"></select> head <select id="head"></select></div>
<div id="hint">Hover over a token to see where it attends (darker = more weight); click to pin it.</div>
<div id="view"></div>
<canvas id="map"></canvas>
<script>
const DATA = __DATA__;
const $ = (id) => document.getElementById(id);
const cache = {};
let pinned = null, query = null;
function weights(p) {
  if (!cache[p]) { const raw = atob(DATA.probes[p].weights); const a = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) a[i] = raw.charCodeAt(i); cache[p] = a; }
  return cache[p];
}
function w(p, l, h, i, j) { const T = DATA.probes[p].labels.length;
  return weights(p)[((l * DATA.n_head + h) * T + i) * T + j] / 255; }
function color(h, alpha) { return `hsla(${Math.round(h * 360 / DATA.n_head)}, 75%, 45%, ${alpha})`; }
function fill(select, items) { select.innerHTML = items.map((t, i) => `<option value="${i}">${t}</option>`).join(""); }
function render() {
  const p = +$("probe").value, l = +$("layer").value, sel = $("head").value;
  const labels = DATA.probes[p].labels, T = labels.length;
  const heads = sel === "all" ? [...Array(DATA.n_head).keys()] : [+sel];
  const q = pinned ?? query ?? T - 1;
  let out = "";
  for (const h of heads) {
    out += `<div class="row"><span class="head" style="color:${color(h, 1)}">H${h}</span>`;
    labels.forEach((label, j) => {
      const a = j <= q ? w(p, l, h, q, j) : 0;
      const cls = "tok" + (j === q ? " query" : "") + (j > q ? " future" : "");
      const title = j <= q ? `weight ${a.toFixed(3)}` : "future: masked";
      out += `<span class="${cls}" data-j="${j}" title="${title}" style="background:${color(h, a)}">${label}</span>`;
    });
    out += "</div>";
  }
  $("view").innerHTML = out;
  document.querySelectorAll(".tok").forEach((el) => {
    el.onmouseenter = () => { query = +el.dataset.j; if (pinned === null) render(); };
    el.onclick = () => { pinned = pinned === +el.dataset.j ? null : +el.dataset.j; render(); };
  });
  const canvas = $("map"), cell = Math.max(4, Math.min(14, Math.floor(480 / T)));
  canvas.style.display = heads.length === 1 ? "block" : "none";
  if (heads.length === 1) {
    canvas.width = canvas.height = T * cell;
    const ctx = canvas.getContext("2d");
    for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) {
      ctx.fillStyle = j <= i ? color(heads[0], w(p, l, heads[0], i, j)) : "#f4f4f4";
      ctx.fillRect(j * cell, i * cell, cell, cell);
    }
    ctx.strokeStyle = "#000"; ctx.strokeRect(0, q * cell, T * cell, cell);
    canvas.onclick = (e) => { pinned = Math.floor(e.offsetY / cell); render(); };
  }
}
fill($("probe"), DATA.probes.map((p) => p.name));
fill($("layer"), [...Array(DATA.n_layer).keys()].map((l) => `L${l}`));
fill($("head"), [...Array(DATA.n_head).keys()].map((h) => `H${h}`));
$("head").insertAdjacentHTML("afterbegin", '<option value="all" selected>all</option>');
for (const id of ["probe", "layer", "head"]) $(id).onchange = () => { pinned = query = null; render(); };
render();
</script>
</body></html>
"""


def head_view_html(probes: list[tuple[str, list[str], np.ndarray]], title: str = "Attention head view") -> str:
    """probes: (name, token labels, weights (n_layer, n_head, T, T)) -> the HTML page."""
    n_layer, n_head = probes[0][2].shape[:2]
    data = {
        "n_layer": n_layer,
        "n_head": n_head,
        "probes": [
            {
                "name": html.escape(name),
                "labels": [html.escape(label) for label in labels],
                "weights": base64.b64encode(np.round(np.clip(weights, 0, 1) * 255).astype(np.uint8).tobytes()).decode("ascii"),
            }
            for name, labels, weights in probes
        ],
    }
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")  # never close the script early
    return PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)
