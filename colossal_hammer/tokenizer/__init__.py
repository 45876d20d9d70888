"""Tokenizer extension, HammerLLM-style merge, coverage/compression analysis."""
