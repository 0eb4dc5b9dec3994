"""The attention report of a model (heads/README.md): heatmaps per probe and layer, the metrics and
ablation of heads/metrics.py, the head view, a table of the probes' strongest weights. train.py
logs it every `wandb.attn_every` steps; for any checkpoint, without training:

    python -m heads.report out_dir=out                # PNGs, head_view.html, metrics.json -> out/heads/
    python -m heads.report out_dir=out wandb=true     # ... and log them to a new wandb run
    python -m heads.report init_from=gpt2             # a pretrained GPT-2 as it is -> heads-gpt2/
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from common.device import resolve_device
from common.errors import ConfigError
from common.folders import atomic_write
from common.settings import typed
from common.wandb_run import HEAD_SCALARS, start_run
from data.batches import TokenBins
from data.checkpoint import load_inference_model
from data.config import DataConfig
from data.gpt2 import PretrainedError, model_name
from data.sources import DataError
from data.tokenizer import Tokenizer
from heads.config import HeadsConfig, ReportSettings
from heads.html_view import head_view_html
from heads.metrics import Ablation, Evidence, ReportHistory, ablate_heads, each, head_evidence, report_windows
from heads.plots import Painter, Picture, drawable_labels, layer_figure, metric_figure, paint, token_texts
from heads.probes import FALLBACK_TEXTS, Probe, configured_probes
from model import GPT

REPORT_STEP = "attn_report_step"  # logged beside a report's pictures: the step they show, their x-axis in wandb
ABLATION_SCALE = 0.05  # bits per byte: the ablation heatmaps' colour scale spans at least +-this
TABLE_COLUMNS = ["probe", "layer", "head", "query_pos", "query_token", "top_key_pos", "top_key_token", "weight"]


@dataclass
class HeadReport:
    evidence: Evidence  # metrics per head and group, with chance
    ablation: Ablation | None
    pictures: dict[str, Picture]  # wandb key -> what draws it (heads.plots.paint turns them into PNGs)
    html: str  # the head view
    table: tuple[list[list], str]  # the attention table's rows (TABLE_COLUMNS), and which of them it keeps
    probes: list[dict]  # each probe's name, text and token labels


def sample_rows(per_probe: list[list[list]], cap: int) -> tuple[list[list], str]:
    """At most `cap` rows, an equal share from each probe, evenly spaced within it; and what was kept."""
    total = sum(len(rows) for rows in per_probe)
    if total <= cap:
        return [row for rows in per_probe for row in rows], f"all {total} rows"
    kept = []
    for i, rows in enumerate(per_probe):
        share = cap // len(per_probe) + (i < cap % len(per_probe))
        picks = np.unique(np.linspace(0, len(rows) - 1, min(share, len(rows))).round().astype(int))
        kept += [rows[j] for j in picks]
    return kept, (f"{len(kept)} of {total} rows: up to {cap // len(per_probe)} per probe, evenly spaced over "
                  "its layers, heads and queries")


def ablation_pictures(deltas: dict[str, np.ndarray]) -> dict[str, Picture]:
    """group -> an L x H heatmap of the increase in bits per byte when each head is silenced."""
    scale = max(ABLATION_SCALE, *(float(np.abs(d).max()) for d in deltas.values()))
    return {f"attn_ablation/{group}": partial(metric_figure, d, "ablation", vmin=-scale, vmax=scale, baseline=0.0,
                                              title=f"val bpb change when the head is silenced ({group})",
                                              baseline_name=None, signed=True)
            for group, d in deltas.items()}


@torch.no_grad()
def build_report(model: GPT, tokenizer: Tokenizer, probes: list[Probe], max_tokens: int, table_rows: int,
                 group_ids: dict[str, torch.Tensor] | None = None, ablation: Ablation | None = None,
                 title: str = "Attention head view", metric_maps: bool = True) -> HeadReport:
    """group_ids: group -> (B, T) windows for the metrics, else each probe is a group. metric_maps: an
    L x H heatmap per metric and group (training's final report only: its charts show the rest)."""
    device = next(model.parameters()).device
    views, per_probe, probe_info, probe_ids = [], [], [], {}
    pictures: dict[str, Picture] = {}
    for probe in probes:
        ids = probe.ids(tokenizer, min(max_tokens, model.config.block_size))
        probe_ids[probe.name] = torch.tensor([ids])
        maps = model.attention_maps(torch.tensor([ids], device=device)).float().cpu()[:, 0].numpy()  # (L, H, T, T)
        labels = token_texts([tokenizer.decode_bytes([i]) for i in ids])
        for layer in range(maps.shape[0]):
            pictures[f"attn_maps/{probe.name}/L{layer}"] = partial(layer_figure, maps[layer], labels,
                                                                    f"{probe.name} · layer {layer}")
        views.append((probe.name, drawable_labels(labels), maps))
        top = maps.argmax(-1)  # (L, H, T): the key each query attends to most
        per_probe.append([[probe.name, layer, head, query, labels[query], int(key), labels[key],
                           round(float(maps[layer, head, query, key]), 4)]
                          for (layer, head, query), key in np.ndenumerate(top)])
        probe_info.append({"name": probe.name, "text": probe.text, "tokens": labels})
    evidence = head_evidence(model, group_ids or probe_ids, tokenizer)
    for metric, groups in evidence.values.items() if metric_maps else ():
        for group, values in groups.items():
            pictures[f"attn_metrics/{metric}/{group}"] = partial(
                metric_figure, values, metric, vmin=0.0, vmax=1.0, baseline=evidence.chance[metric][group],
                title=f"{metric} ({group}, {evidence.windows[group]} windows)")
    if ablation is not None:
        pictures.update(ablation_pictures(ablation[1]))
    # the metrics are the validation windows', not the probe's on screen: the page says so beside them
    measured_on = (f"{', '.join(f'{n} {g}' for g, n in evidence.windows.items())} validation windows"
                   if group_ids else "the probes, each its own group (no validation data)")
    html = head_view_html(views, title, evidence.values, evidence.chance,
                          f"Measured on {measured_on}, not on the probe shown; chance: uniform causal attention there.")
    return HeadReport(evidence, ablation, pictures, html, sample_rows(per_probe, table_rows), probe_info)


def log_report(run, report: HeadReport, step: int, history: ReportHistory | None = None) -> None:
    """Everything but the pictures to a common.wandb_run.WandbRun; the entry is built inside its guard:
    wandb.Html writes a file, and a full disk there is one warning, not the end of training."""
    def entry() -> dict:
        import wandb

        entry: dict = {"attn_head_view": wandb.Html(report.html, inject=False),
                       "attn_table": wandb.Table(columns=TABLE_COLUMNS, data=report.table[0])}
        for metric, groups in report.evidence.values.items():
            for group, values in groups.items():
                for layer, head in np.ndindex(values.shape):
                    entry[f"{HEAD_SCALARS}/{group}/L{layer}H{head}/{metric}"] = float(values[layer, head])
        if history is not None:
            history.add(step, report.evidence)
            entry.update(history.charts(report.evidence))
        if report.ablation is not None:  # a row per head: the bpb increase per group, and en - zh
            deltas = report.ablation[1]
            columns = {f"delta_bpb_{group}": d for group, d in deltas.items()}
            if "en" in deltas and "zh" in deltas:
                columns["en_minus_zh"] = deltas["en"] - deltas["zh"]
            rows = [[layer, head, *(round(float(d[layer, head]), 4) for d in columns.values())]
                    for layer, head in np.ndindex(next(iter(deltas.values())).shape)]
            entry["attn_ablation_table"] = wandb.Table(columns=["layer", "head", *columns], data=rows)
        return entry

    run.log(entry, step=step)


def log_pictures(run, files: dict[str, Path], step: int, report_step: int) -> None:
    """A report's PNGs at `step`, which is later than the report's own when they were drawn in the
    background: wandb.log cannot go back a step, so the report's step is their caption, and REPORT_STEP
    beside them, which wandb's media panels step by (define_metric)."""
    def define() -> None:
        for prefix in {key.split("/")[0] for key in files}:  # attn_maps, attn_metrics, attn_ablation
            run.run.define_metric(f"{prefix}/*", step_metric=REPORT_STEP)

    def entry() -> dict:
        import wandb

        return {REPORT_STEP: report_step, **{key: wandb.Image(str(path), caption=f"report of step {report_step}")
                                             for key, path in files.items()}}

    run.send(define)
    run.log(entry, step=step)


def write_report(report: HeadReport, folder: Path, step: int | None = None) -> dict[str, Path]:
    """The PNGs, head_view.html and metrics.json (every number) into folder: key -> file."""
    written = paint(report.pictures, folder)
    ev = report.evidence
    summary = {"step": step, "windows": ev.windows, "metrics": each(ev.values, lambda v: np.round(v, 4).tolist()),
               "chance": each(ev.chance, lambda c: round(c, 4)), "standouts": ev.standouts(),
               "attn_table": report.table[1]}
    if report.ablation is not None:
        intact, deltas = report.ablation
        summary["ablation"] = {"method": "zero each head's context vector", "intact_bpb": intact,
                               "delta_bpb": {g: np.round(d, 4).tolist() for g, d in deltas.items()}}
    summary["probes"] = report.probes
    atomic_write(folder / "head_view.html", lambda f: f.write(report.html.encode("utf-8")))
    atomic_write(folder / "metrics.json", lambda f: f.write(json.dumps(summary, ensure_ascii=False, indent=1).encode()))
    return {**written, "head_view": folder / "head_view.html", "metrics": folder / "metrics.json"}


def check_report_dir(folder: Path) -> None:
    """Fail before the checkpoint is read, not after the report is built, when `folder` cannot be made."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} is not a folder" if not existing.is_dir() else f"{existing} is read-only"
        raise ConfigError(f"report_dir={folder} cannot be written ({why}): choose another report_dir "
                          "or fix its permissions")


def print_top_heads(report: HeadReport) -> None:
    """The heads past chance by their margin, the metrics with none, the costliest head to silence."""
    hits = {metric: [f"{g} L{t['layer']}H{t['head']} {t['value']:.2f} (chance {t['chance']:.3f})"
                     for g, t in groups.items() if t["named"]]
            for metric, groups in report.evidence.standouts().items()}
    print("attention heads past chance by their margin: "
          + ("; ".join(f"{metric}: {', '.join(named)}" for metric, named in hits.items() if named) or "none"))
    if unnamed := [metric for metric, named in hits.items() if not named]:
        print(f"no head clears chance by its margin for: {', '.join(unnamed)}")
    if report.ablation is not None:
        intact, deltas = report.ablation
        worst = {group: np.unravel_index(np.argmax(d), d.shape) for group, d in deltas.items()}  # (layer, head)
        costs = [f"{g} L{layer}H{head} +{deltas[g][layer, head]:.3f} (of {intact[g]:.3f})"
                 for g, (layer, head) in worst.items()]
        print("silencing one head costs the most bits per byte: " + ", ".join(costs))


def note_explicit_maps(model: GPT) -> None:
    """Once per run: the fused kernels and the tiled path never form the weights, so model.attention_maps
    runs explicit_attention on the same weights, and the maps are those of the explicit path."""
    if model.config.attn_impl != "explicit":
        print(f"note: attention maps are computed with the explicit path (model.attn_impl={model.config.attn_impl} "
              "cannot return weights)")


def report_inputs(model: GPT, bins: TokenBins | None, settings: ReportSettings, device: torch.device,
                  dtype: torch.dtype, ablate: bool, batch_size: int = 16) -> tuple[dict | None, Ablation | None]:
    """The validation windows per group and the ablation; None for either without prepared data."""
    if bins is None:
        return None, None
    group_ids = report_windows(bins, model.config.block_size, settings.windows)
    if not ablate or settings.ablation_windows == 0:
        return group_ids, None
    return group_ids, ablate_heads(model, bins, settings.ablation_windows, batch_size, device, dtype)


class TrainingReports:
    """A training run's reports: train.py calls report() on schedule, log_pictures() at progress lines
    in between (one of the two at most per step, so that no report's pictures replace another's) and
    close() after the final evaluation and save. Pictures are logged at the first of those steps after
    they are drawn; the final report's at its own step, by close()."""

    def __init__(self, run, model: GPT, bins, probes: list[Probe], settings, device: torch.device,
                 dtype: torch.dtype, title: str, history: ReportHistory):
        self.run, self.model, self.bins, self.probes, self.settings = run, model, bins, probes, settings
        self.device, self.dtype, self.title, self.history = device, dtype, title, history
        # on a CPU drawing stalls training for seconds a report, so by default only the final report
        # draws; the head view shows every report's maps
        pictures = settings.pictures
        self.pictures = pictures if pictures != "auto" else ("final" if device.type == "cpu" else "background")
        self.painter = Painter(background=self.pictures == "background")
        note_explicit_maps(model)

    def report(self, step: int, final: bool) -> None:
        if not self.run.active:
            return  # wandb failed earlier (warned once): nothing would receive the report
        started, ws = time.time(), self.settings
        ablate = ws.ablation == "every" or (ws.ablation == "final" and final)
        group_ids, ablation = report_inputs(self.model, self.bins, ws, self.device, self.dtype, ablate)
        ablation_seconds = time.time() - started  # the windows themselves take milliseconds
        report = build_report(self.model, self.bins.tokenizer, self.probes, ws.probe_tokens, ws.table_rows,
                              group_ids, ablation, f"{self.title} · step {step}", metric_maps=final)
        log_report(self.run, report, step, self.history)
        if final or self.pictures != "final":
            self.painter.submit(step, report.pictures, spread=final)
            if not final:  # the final report's are logged by close(), drawn while the final evaluation and save run
                self.log_pictures(step)
            where = " (pictures drawn in the background)" if self.painter.pool is not None else ""
        else:
            where = f" (no pictures until the final report: wandb.pictures={ws.pictures})"
        print(f"attention report at step {step} in {time.time() - started:.1f}s"
              + (f" (head ablation {ablation_seconds:.1f}s of it)" if ablation else "") + where)
        print_top_heads(report)

    def log_pictures(self, step: int, wait: bool = False) -> None:
        """The oldest drawn report's pictures: one report's per step, as a second would replace them in
        wandb. With wait (the final report) the last report's; older ones still pending are skipped."""
        ready = self.painter.ready(wait, limit=None if wait else 1)
        for report_step, files in ready:
            if isinstance(files, BaseException):
                why = (f"{files.strerror} in {self.painter.folder}" if isinstance(files, OSError)  # a full TMPDIR
                       else f"{type(files).__name__}: {files}")
                print(f"warning: the attention pictures of step {report_step} could not be drawn ({why})"
                      + ("; the report's numbers and head view were logged" if self.run.active else ""),
                      file=sys.stderr, flush=True)
            elif report_step != ready[-1][0]:
                print(f"note: the attention pictures of step {report_step} were still being drawn when the final "
                      f"report's were logged, so they are not in wandb (reports closer than drawing takes)")
            else:
                log_pictures(self.run, files, step, report_step)
            self.painter.release(report_step)

    def close(self, final_step: int | None) -> None:
        """Log the final report's pictures at final_step, waiting for them; None (an interrupted or failed
        run) drops the pictures still being drawn."""
        if final_step is not None:
            self.log_pictures(final_step, wait=True)
        self.painter.close()


def checkpoint_bins(checkpoint: dict, tokenizer: Tokenizer) -> TokenBins | None:
    """The prepared data the checkpoint was trained on, or None (said why) when it is not there."""
    if "init_from" in checkpoint:
        print("a pretrained model as it is has no validation data here; the metrics use the probes alone")
        return None
    try:
        folder = DataConfig(**checkpoint["config"]["data"]).dir  # a fine-tuned run's: keyed by its model's tokenizer
        bins = TokenBins(folder)
    except (KeyError, TypeError, DataError, PretrainedError) as e:
        print(f"no validation data for the metrics and ablation ({e}); the metrics use the probes alone")
        return None
    if bins.tokenizer.hash != tokenizer.hash:
        print(f"{folder} holds another tokenizer than the checkpoint's; the metrics use the probes alone")
        return None
    return bins


def report_checkpoint(cfg) -> None:
    """python -m heads.report: a checkpoint's, or a pretrained GPT-2's (init_from), report to files."""
    cfg = typed(HeadsConfig, cfg, "")  # every setting typed and in range before anything is read
    # a pretrained model has no out_dir: its report goes to heads-<its name> in the working folder
    default = Path(f"heads-{model_name(Path(cfg.init_from))}") if cfg.init_from else Path(cfg.out_dir) / "heads"
    folder = Path(cfg.report_dir) if cfg.report_dir is not None else default
    check_report_dir(folder)
    model, tokenizer, checkpoint = load_inference_model(cfg.out_dir, resolve_device(cfg.device), cfg.checkpoint,
                                                        cfg.init_from)
    probes = configured_probes(cfg.probes, None, cfg.probe_tokens) if cfg.probes else [
        Probe(name, text) for name, text in checkpoint.get("probes", [])]
    if not probes:
        print("no probe texts in the model or in probes=[...]: using an English, a Chinese and a pair line")
        probes = configured_probes(FALLBACK_TEXTS, None, cfg.probe_tokens)
    note_explicit_maps(model)
    device, step = next(model.parameters()).device, checkpoint.get("step")
    group_ids, ablation = report_inputs(model, checkpoint_bins(checkpoint, tokenizer), cfg, device, torch.float32,
                                        ablate=True)
    source = cfg.init_from or cfg.out_dir
    title = f"{Path(source).name} · " + (f"step {step}" if step is not None else "pretrained")
    report = build_report(model, tokenizer, probes, cfg.probe_tokens, cfg.table_rows, group_ids, ablation, title)
    try:
        written = write_report(report, folder, step)
    except OSError as e:
        raise ConfigError(f"report_dir={folder} cannot be written ({e.strerror or e}): choose another report_dir "
                          "or free some space") from None
    print(f"wrote {len(written)} files to {folder}/ (open head_view.html in a browser)")
    print_top_heads(report)
    if cfg.wandb:
        wandb_run = start_run("auto", cfg.wandb_project, f"heads-{Path(source).name}",
                              {"checkpoint": str(source), "step": step}, folder if cfg.init_from else Path(cfg.out_dir))
        if wandb_run is not None:  # None: WANDB_MODE=disabled, or not even an offline run could start (warned)
            step = int(step or 0)
            log_report(wandb_run, report, step)
            log_pictures(wandb_run, {key: written[key] for key in report.pictures}, step, step)
            where = wandb_run.finish()
            if where:
                print(where)


if __name__ == "__main__":
    from common.cli import hydra_entry

    hydra_entry("heads", "python -m heads.report", HeadsConfig, report_checkpoint,
                lambda cfg: "the report is incomplete")
