"""The head view: one self-contained interactive HTML page (heads/head_view.html, filled in here),
its data, script and font inline, so it works in wandb, offline, or as a local file. Weights are
stored as bytes (0..255); Chinese is drawn by an embedded subset of Noto Sans CJK."""
from __future__ import annotations

import base64
import functools
import html
import importlib.util
import io
import json
import math
import re
from pathlib import Path

import numpy as np
from matplotlib import colormaps

from heads.metrics import each, standout
from heads.plots import CJK_FONT, latin_code_points

FONT_NAME = "Head view CJK"  # the CSS family of the embedded subset

# the page's HTML, CSS and script, with __NAME__ markers for head_view_html to fill
PAGE = Path(__file__).with_name("head_view.html").read_text(encoding="utf-8")
# matplotlib's viridis at 9 evenly spaced points, as RGB: the page interpolates between them, so its
# heatmaps read like the report's PNGs
VIRIDIS = np.round(colormaps["viridis"](np.linspace(0, 1, 9))[:, :3] * 255).astype(int).tolist()


@functools.cache
def cjk_face() -> bytes:
    """Noto Sans CJK SC out of the pip-installed 19 MB collection (slow: once per process), without the
    layout and vertical tables a subset for the page never needs."""
    import noto_cjk_sans_otc
    from fontTools.ttLib import TTCollection

    collection = TTCollection(str(noto_cjk_sans_otc.FONT_PATH), lazy=True)
    face = next(f for f in collection.fonts if f["name"].getDebugName(1) == CJK_FONT)
    for tag in {"GSUB", "GPOS", "GDEF", "BASE", "VORG", "vhea", "vmtx"} & set(face.keys()):
        del face[tag]
    buffer = io.BytesIO()
    face.save(buffer)
    return buffer.getvalue()


def embedded_font(text: str) -> str:
    """An @font-face rule with the glyphs of `text` that DejaVu Sans lacks, or "" when it draws them all."""
    return font_face(frozenset(ord(ch) for ch in text) - latin_code_points())


@functools.cache
def font_face(code_points: frozenset[int]) -> str:
    """Cached on the code points, not the page's text: a run's probes keep their Chinese from report to
    report while the title's step changes, and subsetting takes about a second."""
    if not code_points:
        return ""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    font = TTFont(io.BytesIO(cjk_face()), lazy=True)
    woff2 = importlib.util.find_spec("brotli") is not None  # woff2 compresses with brotli, not always installed
    # smaller without hints (they are for print) and layout features
    subsetter = subset.Subsetter(subset.Options(hinting=False, desubroutinize=True, layout_features=[],
                                                flavor="woff2" if woff2 else None))
    subsetter.populate(unicodes=code_points & set(font.getBestCmap()))
    subsetter.subset(font)
    buffer = io.BytesIO()
    font.save(buffer)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    mime = "font/woff2" if woff2 else "font/otf"
    return f'@font-face {{ font-family: "{FONT_NAME}"; src: url(data:{mime};base64,{encoded}); }}'


def rounded(values: np.ndarray | float) -> list | float | None:
    """Numbers as (nested lists of) floats for JSON, rounded, with NaN and inf as null."""
    values = np.asarray(values, dtype=float)
    return [rounded(v) for v in values] if values.ndim else (round(float(values), 4) if math.isfinite(values) else None)


def named_heads(metrics: dict[str, dict[str, np.ndarray]], baselines: dict[str, dict[str, float]]) -> list[dict]:
    """The heads the report names (heads.metrics.standout), for the overview to mark: where and for what."""
    named = []
    for metric, groups in metrics.items():
        for group, values in groups.items():
            if group in baselines.get(metric, {}):
                best = standout(values, baselines[metric][group], metric)
                if best["named"]:
                    named.append({"layer": best["layer"], "head": best["head"], "metric": metric, "group": group,
                                  "value": rounded(best["value"])})
    return named


def head_view_html(probes: list[tuple[str, list[str], np.ndarray]], title: str = "Attention head view",
                   metrics: dict[str, dict[str, np.ndarray]] | None = None,
                   baselines: dict[str, dict[str, float]] | None = None, metrics_note: str = "") -> str:
    """probes: (name, token labels, weights (n_layer, n_head, T, T)) each; metrics: metric -> group ->
    (n_layer, n_head); baselines: metric -> group -> chance; metrics_note: what the metrics were measured
    on, shown above them."""
    n_layer, n_head = probes[0][2].shape[:2]
    for name, labels, weights in probes:
        if weights.shape != (n_layer, n_head, len(labels), len(labels)):
            raise ValueError(f"probe {name!r}: weights {weights.shape} are not (n_layer, n_head, T, T) = "
                             f"({n_layer}, {n_head}, {len(labels)}, {len(labels)})")
    metrics = metrics or {}
    for metric, groups in metrics.items():
        for group, values in groups.items():
            if np.shape(values) != (n_layer, n_head):
                raise ValueError(f"metric {metric!r}, group {group!r}: {np.shape(values)} is not (n_layer, n_head) "
                                 f"= ({n_layer}, {n_head})")
    as_bytes = [np.round(np.clip(weights, 0, 1) * 255).astype(np.uint8).tobytes() for _, _, weights in probes]
    data = {"title": title, "n_layer": n_layer, "n_head": n_head,
            "probes": [{"name": name, "labels": list(labels), "weights": base64.b64encode(stored).decode("ascii")}
                       for (name, labels, _), stored in zip(probes, as_bytes)],
            "metrics": each(metrics, rounded), "baselines": each(baselines or {}, rounded),
            "named": named_heads(metrics, baselines or {}), "metrics_note": metrics_note}
    # every "<" escaped: no text (a probe called "</script>") can end the script or open a comment
    payload = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    shown = title + metrics_note + "".join(name + "".join(labels) for name, labels, _ in probes) + "".join(metrics)
    shown += "".join(g for groups in metrics.values() for g in groups)
    parts = {"FONT_FACE": embedded_font("".join(sorted(set(shown)))), "FONT_NAME": FONT_NAME,
             "GRADIENT": ", ".join(f"rgb({r},{g},{b})" for r, g, b in VIRIDIS), "VIRIDIS": json.dumps(VIRIDIS),
             "TITLE": html.escape(title), "DATA": payload}
    return re.sub(r"__([A-Z_]+)__", lambda m: parts[m.group(1)], PAGE)  # one pass: inserted text is never rescanned
