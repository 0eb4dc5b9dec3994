"""Leaf modules every layer may import (they import nothing else of the project): the errors a user
can fix, the typed settings, the command line, process guards and signals, safe files and folders,
device and dtype, sweeps, the wandb run. See common/README.md."""
