"""RoPE for a long-context stage: a new base (`--rope_theta`, as Code Llama's 1e6) and a scaling of the
positions (`--rope_scaling linear|dynamic|yarn|llama3 --rope_factor F`), set on the model's config before the
model is built, so that the rotary embedding is made with them and every checkpoint's and export's
config.json carries them: transformers, vLLM and our server then load the model as it was trained.

Each scaling is written as transformers' `rope_scaling` dict. yarn and llama3 take the model's context before
the stage as `original_max_position_embeddings`, and the context grows to factor x that; llama3 uses Llama
3.1's frequency bounds (1, 4). dynamic (NTK) rescales only past max_position_embeddings, which stays.
"""

from __future__ import annotations

from typing import Optional


def overrides(config, theta: Optional[float], scaling: Optional[str], factor: Optional[float]) -> dict:
    """The config fields to set (none when no flag is given)."""
    values = {}
    if theta is not None:
        values["rope_theta"] = float(theta)
    if scaling is not None:
        rope = {"rope_type": scaling, "factor": float(factor)}
        if scaling in ("yarn", "llama3"):
            rope["original_max_position_embeddings"] = config.max_position_embeddings
            values["max_position_embeddings"] = int(config.max_position_embeddings * factor)
        if scaling == "llama3":
            rope.update(low_freq_factor=1.0, high_freq_factor=4.0)
        values["rope_scaling"] = rope
    return values


def apply(config, theta: Optional[float] = None, scaling: Optional[str] = None, factor: Optional[float] = None):
    for name, value in overrides(config, theta, scaling, factor).items():
        setattr(config, name, value)
    return config
