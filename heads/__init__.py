"""What every attention head does: probes, per-head metrics, heatmaps, an interactive head view,
and the report that logs them to wandb during training or writes them for any checkpoint."""
