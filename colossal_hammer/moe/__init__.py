"""Mixture-of-experts: Mixtral-style models, the router's losses and the expert-parallel plugin."""
