"""The attention report's history over a run: every report's per-head metrics, for wandb's charts
(one per metric and group, a line per head) and for the checkpoint, so a resumed run's charts go
on from its first report."""
from __future__ import annotations

import numpy as np

from heads.evidence import Evidence


class ReportHistory:
    """Every report's metrics of one run, for the charts: one per metric and group, a line per head."""

    def __init__(self, state: dict | None = None) -> None:
        """state: a checkpoint's `report_history` (state()), so a resumed run's charts go on from its start."""
        self.steps: list[int] = list(state["steps"]) if state else []
        self.values: list[dict[str, dict[str, np.ndarray]]] = [
            {m: {g: np.array(v) for g, v in groups.items()} for m, groups in values.items()}
            for values in (state["values"] if state else [])]

    def add(self, step: int, evidence: Evidence) -> None:
        self.steps.append(step)
        self.values.append({m: {g: v.numpy() for g, v in groups.items()} for m, groups in evidence.values.items()})

    def state(self) -> dict:
        """Plain lists, for the checkpoint (torch.load(weights_only=True) reads them)."""
        return {"steps": list(self.steps),
                "values": [{m: {g: v.tolist() for g, v in groups.items()} for m, groups in values.items()}
                           for values in self.values]}

    def charts(self, evidence: Evidence) -> dict:
        """attn_chart/<metric>/<group> -> a wandb line chart over the steps so far, a line per head."""
        import wandb

        charts = {}
        for metric, groups in evidence.values.items():
            for group, latest in groups.items():
                heads = [(layer, head) for layer, head in np.ndindex(latest.shape)]
                ys = [[float(v[metric][group][layer, head]) if group in v.get(metric, {}) else float("nan")
                       for v in self.values] for layer, head in heads]
                charts[f"attn_chart/{metric}/{group}"] = wandb.plot.line_series(
                    xs=self.steps, ys=ys, keys=[f"L{layer}H{head}" for layer, head in heads], xname="step",
                    title=f"{metric} ({group}) · chance {evidence.chance[metric][group]:.3f}")
        return charts
