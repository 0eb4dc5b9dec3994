"""The data pipeline: corpus sources -> documents and split -> BPE tokenizer -> token bins -> batches.

Prepare with `python -m data.prepare` (train.py does it for you when needed).
"""
