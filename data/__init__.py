"""The data pipeline: sources -> documents and split -> tokenizer -> token bins (python -m data.prepare) -> batches."""
