"""The training machinery behind train.py: runtime (device, precision), schedule, evaluation,
checkpoints and the wandb run."""
