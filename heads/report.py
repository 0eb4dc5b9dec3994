"""The attention report of a model: per-layer heatmaps for every probe, the per-head metrics and
their L x H heatmaps, the interactive head view and a table of the probes' strongest weights.

train.py logs it to wandb every `wandb.attn_every` steps. For any checkpoint, without training:

    python -m heads.report out_dir=out                # PNGs, head_view.html, metrics.json -> out/heads/
    python -m heads.report out_dir=out wandb=true     # ... and log them to a new wandb run
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from data.tokenizer import Tokenizer
from heads.html_view import head_view_html
from heads.labels import token_texts
from heads.metrics import head_metrics, induction_tokens
from heads.plots import drawable_labels, layer_figure, metric_figure
from heads.probes import Probe, configured_probes
from model import GPT

INDUCTION_BATCH = 4
INDUCTION_SEED = 1234


@dataclass
class HeadReport:
    metrics: dict[str, np.ndarray]  # metric -> (n_layer, n_head)
    figures: dict[str, Figure]  # wandb key -> figure
    html: str
    table_columns: list[str]
    table_rows: list[list]
    probes: list[dict]

    def top_heads(self) -> dict[str, dict]:
        """For each metric, the head with the highest value."""
        top = {}
        for name, values in self.metrics.items():
            layer, head = np.unravel_index(np.argmax(values), values.shape)
            top[name] = {"layer": int(layer), "head": int(head), "value": round(float(values[layer, head]), 4)}
        return top


def probe_table(name: str, labels: list[str], maps: np.ndarray) -> list[list]:
    """For each layer, head and query of a probe, the key it attends to most. maps: (L, H, T, T)."""
    rows = []
    n_layer, n_head, T, _ = maps.shape
    top_key = maps.argmax(-1)  # (L, H, T)
    for layer in range(n_layer):
        for head in range(n_head):
            for query in range(T):
                key = int(top_key[layer, head, query])
                rows.append([name, layer, head, query, labels[query], key, labels[key],
                             round(float(maps[layer, head, query, key]), 4)])
    return rows


@torch.no_grad()
def build_report(model: GPT, tokenizer: Tokenizer, probes: list[Probe], max_tokens: int, table_rows: int) -> HeadReport:
    device = next(model.parameters()).device
    probe_maps, views, rows, probe_info = [], [], [], []
    figures: dict[str, Figure] = {}
    for probe in probes:
        ids = probe.ids(tokenizer, min(max_tokens, model.config.block_size))
        maps = model.attention_maps(torch.tensor([ids], device=device)).float().cpu()  # (L, 1, H, T, T)
        probe_maps.append(maps)
        labels = token_texts([tokenizer.decode_bytes([i]) for i in ids])
        shown = drawable_labels(labels)
        per_layer = maps[:, 0].numpy()  # (L, H, T, T)
        for layer in range(per_layer.shape[0]):
            figures[f"attn_maps/{probe.name}/L{layer}"] = layer_figure(per_layer[layer], labels, f"{probe.name} · layer {layer}")
        views.append((probe.name, shown, per_layer))
        rows += probe_table(probe.name, labels, per_layer)
        probe_info.append({"name": probe.name, "text": probe.text, "tokens": labels})
    n = min(model.config.block_size // 2, 64)
    repeated = induction_tokens(model.config.vocab_size, n, INDUCTION_BATCH, INDUCTION_SEED, tokenizer.eot_id)
    induction_maps = model.attention_maps(repeated.to(device)).float().cpu()
    metrics = {k: v.numpy() for k, v in head_metrics(probe_maps, induction_maps).items()}
    for name, values in metrics.items():
        figures[f"attn_metrics/{name}"] = metric_figure(values, name)
    columns = ["probe", "layer", "head", "query_pos", "query_token", "top_key_pos", "top_key_token", "weight"]
    return HeadReport(metrics, figures, head_view_html(views), columns, rows[:table_rows], probe_info)


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def log_report(run, report: HeadReport, step: int) -> None:
    """Images, the head view, per-head scalars attn/L{l}H{h}/{metric} and the table, at `step`, to a
    trainer.wandb_run.WandbRun. The entry is built inside its guard: wandb.Image and wandb.Html write
    files, so a full disk there is one warning, not the end of training."""
    def entry() -> dict:
        import wandb
        from PIL import Image

        entry: dict = {key: wandb.Image(Image.open(io.BytesIO(png_bytes(fig)))) for key, fig in report.figures.items()}
        entry["attn_head_view"] = wandb.Html(report.html, inject=False)
        entry["attn_table"] = wandb.Table(columns=report.table_columns, data=report.table_rows)
        for name, values in report.metrics.items():
            for layer, head in np.ndindex(values.shape):
                entry[f"attn/L{layer}H{head}/{name}"] = float(values[layer, head])
        return entry

    run.log(entry, step=step)


def write_report(report: HeadReport, folder: Path, step: int | None = None) -> list[Path]:
    """PNGs (one per figure), head_view.html and metrics.json into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for key, fig in report.figures.items():
        path = folder / (key.replace("/", "_") + ".png")
        path.write_bytes(png_bytes(fig))
        written.append(path)
    (folder / "head_view.html").write_text(report.html, encoding="utf-8")
    summary = {"step": step, "metrics": {k: np.round(v, 4).tolist() for k, v in report.metrics.items()},
               "top_heads": report.top_heads(), "probes": report.probes}
    (folder / "metrics.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
    return written + [folder / "head_view.html", folder / "metrics.json"]


def check_report_dir(folder: Path) -> None:
    """Fail before the checkpoint is read, not after the report is built, when `folder` cannot be
    made or written: its nearest existing ancestor must be a folder this process may write."""
    from trainer.runtime import ConfigError

    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} is not a folder" if not existing.is_dir() else f"{existing} is read-only"
        raise ConfigError(f"report_dir={folder} cannot be written ({why}): choose another report_dir "
                          "or fix its permissions")


def print_top_heads(report: HeadReport) -> None:
    print("attention heads, highest per metric: " + ", ".join(
        f"{name} L{t['layer']}H{t['head']} {t['value']:.2f}" for name, t in report.top_heads().items()))


def report_checkpoint(cfg) -> None:
    """python -m heads.report: the report of one checkpoint, written to files (and to wandb)."""
    from trainer.checkpoint import load_model
    from trainer.config import HeadsConfig
    from trainer.runtime import ConfigError, resolve_device
    from trainer.settings import typed
    from trainer.wandb_run import start_run

    cfg = typed(HeadsConfig, cfg, "")  # every setting typed and in range before anything is read
    folder = Path(cfg.report_dir) if cfg.report_dir is not None else Path(cfg.out_dir) / "heads"
    check_report_dir(folder)
    model, tokenizer, checkpoint = load_model(cfg.out_dir, resolve_device(cfg.device), cfg.checkpoint)
    texts = cfg.probes
    probes = configured_probes(texts, None, cfg.probe_tokens) if texts else [
        Probe(name, text) for name, text in checkpoint.get("probes", [])]
    if not probes:
        raise ConfigError(f"the {cfg.checkpoint} checkpoint in {cfg.out_dir} stores no probe texts: give probes=[\"...\", ...]")
    report = build_report(model, tokenizer, probes, cfg.probe_tokens, cfg.table_rows)
    try:
        written = write_report(report, folder, checkpoint.get("step"))
    except OSError as e:
        raise ConfigError(f"report_dir={folder} cannot be written ({e.strerror or e}): choose another report_dir "
                          "or free some space") from None
    print(f"wrote {len(written)} files to {folder}/ (open head_view.html in a browser)")
    print_top_heads(report)
    if cfg.wandb:
        wandb_run = start_run("auto", cfg.wandb_project, f"heads-{Path(cfg.out_dir).name}",
                              {"checkpoint": str(cfg.out_dir), "step": checkpoint.get("step")}, Path(cfg.out_dir))
        if wandb_run is not None:  # None: WANDB_MODE=disabled, or not even an offline run could start (warned)
            log_report(wandb_run, report, step=int(checkpoint.get("step") or 0))
            where = wandb_run.finish()
            if where:
                print(where)


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    from trainer.cli import prepare_hydra_argv, run_entry

    prepare_hydra_argv("heads", "python -m heads.report")

    @hydra.main(config_path="../config", config_name="heads", version_base=None)
    def run(cfg: DictConfig) -> None:
        run_entry(lambda: report_checkpoint(cfg), interrupted=lambda: "the report is incomplete")

    run()


if __name__ == "__main__":
    main()
