"""Checkpoint → standalone HF folder (safetensors, config, tokenizer) in the dtype you ask for.

    python -m colossal_hammer.model.export --checkpoint SAVE_DIR/step-N --output_dir OUT [--dtype bf16] \
        [--tokenizer_dir TOKENIZER]

The tokenizer saved in the checkpoint is copied beside the weights; a run built from --model_config
has none, so the export says so in one line and --tokenizer_dir copies one in.

Wrapper prefixes (`_orig_mod.` from torch.compile anywhere in a key, a leading `module.` from DDP)
are removed by name; a key is never cut at its first dot blindly. Every weight of the model must be
found and no key may be left over, except a tied lm_head.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import TYPE_CHECKING, Dict, Optional

from ..errors import InputError, check_output, require_tokenizer, run_cli, writing
from ..tokenizer.files import copy_tokenizer_files
from .folders import hf_folder_of

if TYPE_CHECKING:
    import torch

# The keys of model.build.DTYPES, spelled here so that a mistyped path is reported before torch and
# transformers load (seconds); tests/model/test_export.py checks the two agree.
DTYPE_NAMES = ("bf16", "fp16", "fp32")


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
        try:
            tensors = load_file(path)
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(f"{path}: damaged weights file ({first}); export an earlier step-N") from None
        for key, tensor in tensors.items():
            state[strip_wrapper_prefixes(key)] = tensor
    return state


def trim_vocabulary(config, state: Dict[str, torch.Tensor]) -> None:
    """Drop the rows build.pad_vocabulary added for tensor parallelism, from the weights and the config."""
    from .build import UNPADDED_VOCAB_KEY

    size = getattr(config, UNPADDED_VOCAB_KEY, None)
    if size is None:
        return
    padded, config.vocab_size = config.vocab_size, size
    delattr(config, UNPADDED_VOCAB_KEY)
    for key, tensor in state.items():
        if key.endswith(("embed_tokens.weight", "lm_head.weight")) and tensor.shape[0] == padded:
            state[key] = tensor[:size]


def export(checkpoint: str, output_dir: str, dtype: Optional[str] = None, tokenizer_dir: Optional[str] = None) -> dict:
    modeling = hf_folder_of(checkpoint, "--checkpoint")
    if tokenizer_dir:
        require_tokenizer(tokenizer_dir, "--tokenizer_dir")
    check_output(output_dir, "--output_dir", [checkpoint, tokenizer_dir])
    import torch  # after the checks: torch and transformers take seconds to load
    from transformers import AutoConfig, AutoModelForCausalLM

    from .build import DTYPES

    try:
        config = AutoConfig.from_pretrained(modeling)
    except (ValueError, OSError) as e:  # a config.json that is not JSON or names no model type
        raise InputError(f"{os.path.join(modeling, 'config.json')}: {str(e).splitlines()[0][:200]}") from None
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
    with writing(output_dir, "--output_dir"):
        model.to(target).save_pretrained(output_dir, safe_serialization=True)
        copied = copy_tokenizer_files(tokenizer_dir or modeling, output_dir)
    if not any(name in copied for name in ("tokenizer.json", "tokenizer.model")):
        print(f"warning: {output_dir} has no tokenizer ({checkpoint} holds none: a --model_config run); "
              f"add one with --tokenizer_dir DIR", file=sys.stderr)
    return {"output_dir": output_dir, "dtype": str(target).replace("torch.", ""), "tensors": len(state),
            "tokenizer_files": copied}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="A step-N checkpoint folder (or its modeling/)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="Default: the checkpoint's dtype")
    p.add_argument("--tokenizer_dir", default=None,
                   help="Copy this tokenizer into the export (default: the one saved in the checkpoint; "
                        "a --model_config run has none)")
    args = p.parse_args(argv)

    def body():
        result = export(args.checkpoint, args.output_dir, args.dtype, args.tokenizer_dir)
        print(json.dumps(result))
        return result

    return run_cli(body)


if __name__ == "__main__":
    main()
