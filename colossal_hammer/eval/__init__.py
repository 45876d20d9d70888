"""Evaluation: perplexity and bits per byte."""
