"""A model folder (HF folder, export, or checkpoint step-N) and an optional LoRA adapter → model, tokenizer.

Weights come from safetensors (or transformers' weights_only loading), never with trust_remote_code.
A checkpoint's modeling/ folder carries the tokenizer when training knew it; otherwise the step-N
folder's parent is not guessed at: the error says to pass an HF folder with a tokenizer.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

from ..errors import TOKENIZER_MARKERS, InputError
from ..model.folders import hf_folder_of


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def resolve_model_folder(path: str, flag: str = "--model") -> str:
    folder = hf_folder_of(path, flag)
    if not any(os.path.isfile(os.path.join(folder, n)) for n in TOKENIZER_MARKERS):
        raise InputError(f"{flag} {path}: the model has no tokenizer; copy one in with "
                         f"`python -m colossal_hammer.model.export --tokenizer_dir DIR`")
    return folder


def check_adapter(path: Optional[str], flag: str = "--adapter") -> Optional[str]:
    if path is None:
        return None
    if not os.path.isdir(path):
        raise InputError(f"{flag} {path}: no such folder; give a LoRA adapter folder (adapter_config.json)")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not os.path.isfile(os.path.join(path, name)):
            raise InputError(f"{flag} {path}: no {name} in it; give a PEFT LoRA adapter saved with safetensors")
    return path


def _check_adapter_weights(peft_model, adapter: str, model_path: str) -> None:
    """Every LoRA weight the model expects must be in the adapter's file.

    peft loads the file non-strictly: weights saved under other module names load as nothing, the
    LoRA layers keep their initial (zero) update, and the base model would be served as if adapted.
    """
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    with safe_open(os.path.join(adapter, "adapter_model.safetensors"), framework="pt") as f:
        saved = set(f.keys())
    expected = set(get_peft_model_state_dict(peft_model))  # the names save_pretrained writes
    missing = sorted(expected - saved)
    if missing:
        what = (f"none of its weights match a module of {model_path}" if len(missing) == len(expected) else
                f"{len(missing)} of the {len(expected)} LoRA weights that {model_path} needs are not in it")
        raise InputError(f"--adapter {adapter}: {what} (first missing: {missing[0]}); was it saved for another model?")


def load(model_path: str, adapter: Optional[str] = None, device: str = "cpu", dtype: str = "auto",
         flag: str = "--model") -> Tuple[object, object]:
    """(model in eval mode on `device`, tokenizer); InputError naming the flag when either does not load."""
    folder = resolve_model_folder(model_path, flag)
    check_adapter(adapter)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    safetensors = any(n.endswith(".safetensors") for n in os.listdir(folder))
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch_dtype, use_safetensors=safetensors,
                                                     trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{flag} {model_path}: does not load: {_first_line(e)}") from None
    if adapter:
        try:
            from peft import PeftModel

            peft_model = PeftModel.from_pretrained(model, adapter, use_safetensors=True)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise InputError(f"--adapter {adapter}: does not load onto {model_path}: {_first_line(e)}") from None
        _check_adapter_weights(peft_model, adapter, model_path)
        model = peft_model.merge_and_unload()
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:  # ids past the embedding would fail every forward pass that meets them
        raise InputError(f"{flag} {model_path}: its tokenizer has {len(tokenizer)} tokens but its embedding only "
                         f"{rows} rows; give the tokenizer it was trained with, or resize it with "
                         f"`python -m colossal_hammer.model.init_embeddings`")
    return model.to(device).eval(), tokenizer


def context_length(model) -> int:
    """How many positions the model was built for (prompt + reply must fit)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def eos_ids(model, tokenizer) -> frozenset:
    """Every id that ends a reply: the tokenizer's EOS and the generation config's (it may list several)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return frozenset(ids)
