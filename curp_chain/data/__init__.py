"""Data files: the generic JSONL format, users' texts and splits, caches, text checks."""
