"""Datasets, samplers and collators."""
