"""Checkpoint → standalone HF folder (safetensors, config, tokenizer) in the dtype you ask for.

    python -m colossal_hammer.model.export --checkpoint SAVE_DIR/step-N --output_dir OUT [--dtype bf16]

Wrapper prefixes (`_orig_mod.` from torch.compile anywhere in a key, a leading `module.` from DDP)
are removed by name; a key is never cut at its first dot blindly. Every weight of the model must be
found and no key may be left over, except a tied lm_head.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Dict, Optional

import torch

from ..errors import InputError, main_with_errors
from .build import DTYPES, UNPADDED_VOCAB_KEY
from ..tokenizer.files import copy_tokenizer_files



def strip_wrapper_prefixes(key: str) -> str:
    parts = [p for p in key.split(".") if p != "_orig_mod"]
    if parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


def load_weights(modeling_dir: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(glob.glob(os.path.join(modeling_dir, "*.safetensors")))
    if not files:
        raise InputError(f"{modeling_dir}: no *.safetensors weights")
    state = {}
    for path in files:
        for key, tensor in load_file(path).items():
            state[strip_wrapper_prefixes(key)] = tensor
    return state


def trim_vocabulary(config, state: Dict[str, torch.Tensor]) -> None:
    """Drop the rows build.pad_vocabulary added for tensor parallelism, from the weights and the config."""
    size = getattr(config, UNPADDED_VOCAB_KEY, None)
    if size is None:
        return
    padded, config.vocab_size = config.vocab_size, size
    delattr(config, UNPADDED_VOCAB_KEY)
    for key, tensor in state.items():
        if key.endswith(("embed_tokens.weight", "lm_head.weight")) and tensor.shape[0] == padded:
            state[key] = tensor[:size]


def export(checkpoint: str, output_dir: str, dtype: Optional[str] = None, tokenizer_dir: Optional[str] = None) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    modeling = os.path.join(checkpoint, "modeling") if os.path.isdir(os.path.join(checkpoint, "modeling")) else checkpoint
    if not os.path.isfile(os.path.join(modeling, "config.json")):
        raise InputError(f"{modeling}: no config.json (is this a colossal_hammer checkpoint?)")
    config = AutoConfig.from_pretrained(modeling)
    state = load_weights(modeling)
    trim_vocabulary(config, state)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    expected = set(model.state_dict())
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = sorted(expected - set(state) - tied)
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise InputError(f"{modeling}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False)
    target = DTYPES[dtype] if dtype else next(iter(state.values())).dtype
    model.to(target).save_pretrained(output_dir, safe_serialization=True)
    copied = copy_tokenizer_files(tokenizer_dir or modeling, output_dir)
    return {"output_dir": output_dir, "dtype": str(target).replace("torch.", ""), "tensors": len(state),
            "tokenizer_files": copied}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="A step-N checkpoint folder (or its modeling/)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="Default: the checkpoint's dtype")
    p.add_argument("--tokenizer_dir", default=None, help="Default: the tokenizer saved in the checkpoint")
    args = p.parse_args(argv)
    result = {}

    def body():
        result.update(export(args.checkpoint, args.output_dir, args.dtype, args.tokenizer_dir))
        print(json.dumps(result))

    main_with_errors(body)
    return result


if __name__ == "__main__":
    main()
