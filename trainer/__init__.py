"""The training machinery behind train.py: settings, optimizers, the guards of the loop, DDP, MFU."""
