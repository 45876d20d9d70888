"""Cleaning of jsonl corpora on datatrove: exact and MinHash near-duplicate removal and quality filters
(python -m colossal_hammer.data.clean; cli.py says what each flag does, pipeline.py how the stages run)."""
