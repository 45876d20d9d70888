"""Let Colossal-AI 0.5.0 save a model with tied weights (lm_head = embed_tokens) on a CPU.

Its checkpoint IO hands each shard to `utils.save_state_dict`, which moves every tensor to the host with
`.cpu()` before safetensors writes them. On a GPU that makes a copy per key, so a tied pair is written as
two equal tensors; on a CPU `.cpu()` returns the tensor itself, the two keys share memory and safetensors
refuses the file ("Some tensors share memory"). Copying every tensor that shares memory with one before it
writes what the GPU path writes: both keys, equal, which every loader (Colossal-AI's, transformers', export)
reads back into the one shared parameter.
"""

import sys

import torch

_PATCHED = False
# The modules of 0.5.0 that call it (grep save_state_dict in its source).
_CALLERS = ("colossalai.checkpoint_io.general_checkpoint_io", "colossalai.checkpoint_io.hybrid_parallel_checkpoint_io",
            "colossalai.checkpoint_io.moe_checkpoint", "colossalai.booster.plugin.low_level_zero_plugin",
            "colossalai.booster.plugin.gemini_plugin")


def _unshared(state_dict: dict) -> dict:
    seen = set()
    out = {}
    for key, value in state_dict.items():
        if torch.is_tensor(value) and value.device.type == "cpu":
            storage = value.untyped_storage().data_ptr()
            if storage in seen:
                value = value.clone()
            seen.add(storage)
        out[key] = value
    return out


def patch() -> None:
    """Idempotent. Every Colossal-AI module that imported save_state_dict by name gets the wrapped one."""
    global _PATCHED
    if _PATCHED:
        return
    import importlib

    from colossalai.checkpoint_io import utils

    for name in _CALLERS:  # imported now, so that their binding is there to replace
        importlib.import_module(name)
    original = utils.save_state_dict

    def save_state_dict(state_dict, checkpoint_file_path, use_safetensors):
        if use_safetensors and isinstance(state_dict, dict):
            state_dict = _unshared(state_dict)
        return original(state_dict, checkpoint_file_path, use_safetensors)

    for name, module in list(sys.modules.items()):
        if name.startswith("colossalai") and getattr(module, "save_state_dict", None) is original:
            module.save_state_dict = save_state_dict
    _PATCHED = True
