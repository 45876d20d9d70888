"""Checkpoint → standalone HF folder (safetensors, config, tokenizer) in the dtype you ask for.

    python -m colossal_hammer.model.export --checkpoint SAVE_DIR/step-N --output_dir OUT [--dtype bf16] \
        [--tokenizer_dir TOKENIZER] [--max_shard_size 5GB]
    python -m colossal_hammer.model.export --checkpoint LORA_SAVE_DIR/step-N --output_dir OUT [--merge_lora]

Streams: no model is built (its key set and shapes come from the config on the meta device), and the
weights are copied one tensor at a time from the checkpoint's safetensors files into HF safetensors
shards (`model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`
above --max_shard_size), cast to --dtype on the way. Memory stays near one tensor whatever the model's
size (bench/export_memory.py measures it).

The tokenizer saved in the checkpoint is copied beside the weights; a run built from --model_config
has none, so the export says so in one line and --tokenizer_dir copies one in.

Wrapper prefixes (`_orig_mod.` from torch.compile anywhere in a key, a leading `module.` from DDP)
are removed by name; a key is never cut at its first dot blindly. Every weight of the model must be
found and no key may be left over, except a tied lm_head. Rows that build.pad_vocabulary added for
tensor parallelism are trimmed (config.json's unpadded_vocab_size).

A LoRA checkpoint (modeling/adapter_config.json) is written as peft's adapter folder, or merged into its
base with --merge_lora (colossal_hammer/model/adapter_export.py).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Tuple

from ..errors import InputError, check_output, command_name, require_tokenizer, run_json_cli, writing
from ..tokenizer.files import copy_tokenizer_files
from .folders import hf_folder_of
from .shards import Entry, parse_size, write_shards

if TYPE_CHECKING:
    import torch

# The keys of model.build.DTYPES, spelled here so that a mistyped path is reported before torch and
# transformers load (seconds); tests/model/test_export.py checks the two agree.
DTYPE_NAMES = ("bf16", "fp16", "fp32")
DEFAULT_MAX_SHARD_SIZE = "5GB"  # transformers' save_pretrained default
TIED_HEAD = "lm_head.weight"
BLOCK_BYTES = 64 * 2**20  # read and cast at most this much of a tensor at a time (in the checkpoint's dtype)


def strip_wrapper_prefixes(key: str) -> str:
    parts = [p for p in key.split(".") if p != "_orig_mod"]
    if parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


def _damaged(path: str, e: Exception) -> InputError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return InputError(f"{path}: damaged weights file ({first}); export an earlier step-N")


def _index_of(modeling_dir: str) -> Dict[str, str]:
    """The weight map of the folder's `*.safetensors.index.json` (stored key -> file name), or {}. It decides
    which copy is read where a tensor is stored twice: Colossal-AI's MoE checkpoint writes one file per
    expert-parallel rank, each with the replicated (non-expert) tensors, and indexes the first copy."""
    found = glob.glob(os.path.join(modeling_dir, "*.safetensors.index.json"))
    if len(found) != 1:
        return {}
    try:
        with open(found[0], encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{found[0]}: not a safetensors index with a weight_map ({e})") from None
    return {str(k): str(v) for k, v in weight_map.items()}


class Source:
    """Where each weight of a checkpoint lies (file, stored key, shape, dtype), read from the headers only.

    Tensors are read when asked, in blocks of rows, each from a file opened for that one read:
    safe_open maps the whole file, and the pages a read touches stay resident while it is open."""

    def __init__(self, modeling_dir: str):
        from safetensors import safe_open

        files = sorted(glob.glob(os.path.join(modeling_dir, "*.safetensors")))
        if not files:
            raise InputError(f"{modeling_dir}: no *.safetensors weights")
        self.where: Dict[str, Tuple[str, str]] = {}
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        self.dtypes: Dict[str, "torch.dtype"] = {}
        indexed = _index_of(modeling_dir)
        for path in files:
            try:
                with safe_open(path, framework="pt") as f:
                    for stored in f.keys():
                        if indexed.get(stored, os.path.basename(path)) != os.path.basename(path):
                            continue  # the index reads this tensor from another file (see _index_of)
                        key = strip_wrapper_prefixes(stored)
                        if key in self.where:
                            raise InputError(f"{path}: {stored} and {self.where[key][1]} are both {key} once "
                                             f"wrapper prefixes are removed; keep one")
                        piece = f.get_slice(stored)
                        self.where[key] = (path, stored)
                        self.shapes[key] = tuple(piece.get_shape())
                        self.dtypes[key] = _torch_dtype(piece.get_dtype())
            except (OSError, InputError):
                raise
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
                raise _damaged(path, e) from None

    def read(self, key: str, rows: Optional[int] = None) -> Iterator["torch.Tensor"]:
        """The tensor (its first `rows` rows) as blocks of at most BLOCK_BYTES, each read from a file
        opened for that block alone, so neither a whole tensor nor the pages mapped for it stay in memory."""
        from safetensors import safe_open

        path, stored = self.where[key]
        shape = self.shapes[key]
        if not shape:
            starts, step = [None], 0
        else:
            rows = shape[0] if rows is None else rows
            row_bytes = max(1, self.dtypes[key].itemsize * math.prod(shape[1:]))
            step = max(1, BLOCK_BYTES // row_bytes)
            starts = range(0, rows, step)
        for start in starts:
            try:
                with safe_open(path, framework="pt") as f:
                    if start is None:
                        block = f.get_tensor(stored)
                    else:
                        block = f.get_slice(stored)[start:min(start + step, rows)]
            except OSError:
                raise
            except Exception as e:  # noqa: BLE001 - a file damaged after its header was read
                raise _damaged(path, e) from None
            yield block


def _torch_dtype(code: str) -> "torch.dtype":
    import torch

    names = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}
    if code not in names:
        raise ValueError(f"unsupported dtype {code}")
    return names[code]


def trim_vocabulary(config) -> Optional[Tuple[int, int]]:
    """Undo build.pad_vocabulary in the config; return (padded, real) row counts, or None if unpadded."""
    from .build import UNPADDED_VOCAB_KEY

    size = getattr(config, UNPADDED_VOCAB_KEY, None)
    if size is None:
        return None
    padded, config.vocab_size = config.vocab_size, size
    delattr(config, UNPADDED_VOCAB_KEY)
    return padded, size


def _is_vocabulary(key: str) -> bool:
    return key.endswith(("embed_tokens.weight", "lm_head.weight"))


def plan(config, source: Source, target: "torch.dtype") -> Tuple[object, List[Entry]]:
    """The model on the meta device (for its config) and the output tensors, in its state_dict order,
    after checking that the checkpoint holds exactly the model's weights with the model's shapes."""
    import torch
    from transformers import AutoModelForCausalLM

    trim = trim_vocabulary(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = getattr(config, "tie_word_embeddings", False) and TIED_HEAD in expected
    missing = sorted(set(expected) - set(source.where) - ({TIED_HEAD} if tied else set()))
    # non-persistent buffers (rotary inv_freq) are derived from the config; Colossal-AI's MoE checkpoint writes
    # them anyway, and the exported model recomputes them
    derived = {name for name, _ in model.named_buffers()} - set(expected)
    unexpected = sorted(set(source.where) - set(expected) - derived)
    if missing or unexpected:
        raise InputError(f"{os.path.dirname(next(iter(source.where.values()))[0])}: weights do not match the "
                         f"config: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def shape_of(key):
        shape = source.shapes[key]
        if trim and _is_vocabulary(key) and shape[0] == trim[0]:
            shape = (trim[1], *shape[1:])
        return shape

    entries = []
    for key, shape in expected.items():
        if tied and key == TIED_HEAD:
            continue  # save_pretrained keeps one copy of tied weights: the embeddings
        # a tied model loaded both rows into one parameter and the head, loaded last, won
        origin = TIED_HEAD if tied and _is_vocabulary(key) and TIED_HEAD in source.where else key
        if shape_of(origin) != shape:
            raise InputError(f"{source.where[origin][0]}: {origin} has shape {list(shape_of(origin))}, "
                             f"the config says {list(shape)}")

        def produce(origin=origin, rows=shape[0] if shape else None):
            # the first `rows` rows: all of them, or the real vocabulary's when padding is trimmed
            return (block.to(target) for block in source.read(origin, rows))

        entries.append(Entry(key, shape, target, produce))
    return model, entries


def save_config(model, target: "torch.dtype", output_dir: str) -> None:
    """config.json and generation_config.json exactly as save_pretrained writes them."""
    config = model.config
    config.torch_dtype = str(target).split(".")[1]
    config.architectures = [type(model).__name__]
    config._attn_implementation_autoset = False
    misplaced = config._get_non_default_generation_parameters()
    for name, value in (misplaced.items() if model.can_generate() else ()):
        setattr(model.generation_config, name, value)
        setattr(config, name, None)
    config.save_pretrained(output_dir)
    if model.can_generate():
        model.generation_config.save_pretrained(output_dir)


def export(checkpoint: str, output_dir: str, dtype: Optional[str] = None, tokenizer_dir: Optional[str] = None,
           max_shard_size: str = DEFAULT_MAX_SHARD_SIZE) -> dict:
    modeling = hf_folder_of(checkpoint, "--checkpoint")
    if tokenizer_dir:
        require_tokenizer(tokenizer_dir, "--tokenizer_dir")
    check_output(output_dir, "--output_dir", [checkpoint, tokenizer_dir])
    try:
        max_bytes = parse_size(max_shard_size)
    except ValueError as e:
        raise InputError(f"--max_shard_size {max_shard_size}: {e}") from None
    from transformers import AutoConfig  # after the checks: torch and transformers take seconds to load

    from .build import DTYPES

    try:
        config = AutoConfig.from_pretrained(modeling)
    except (ValueError, OSError) as e:  # a config.json that is not JSON or names no model type
        raise InputError(f"{os.path.join(modeling, 'config.json')}: {str(e).splitlines()[0][:200]}") from None
    source = Source(modeling)
    target = DTYPES[dtype] if dtype else source.dtypes[next(iter(source.where))]
    model, entries = plan(config, source, target)
    with writing(output_dir, "--output_dir"):
        files = write_shards(output_dir, entries, max_bytes)
        save_config(model, target, output_dir)
        copied = copy_tokenizer_files(tokenizer_dir or modeling, output_dir)
    if not any(name in copied for name in ("tokenizer.json", "tokenizer.model")):
        print(f"warning: {output_dir} has no tokenizer ({checkpoint} holds none: a --model_config run); "
              f"add one with --tokenizer_dir DIR", file=sys.stderr)
    return {"output_dir": output_dir, "dtype": str(target).replace("torch.", ""), "tensors": len(source.where),
            "weight_files": files, "tokenizer_files": copied}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog=command_name(__spec__), description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="A step-N checkpoint folder (or its modeling/)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="Default: the checkpoint's dtype")
    p.add_argument("--tokenizer_dir", default=None,
                   help="Copy this tokenizer into the export (default: the one saved in the checkpoint; "
                        "a --model_config run has none)")
    p.add_argument("--max_shard_size", default=DEFAULT_MAX_SHARD_SIZE,
                   help="Largest weights file written (5GB = 5*10^9 bytes, 2GiB = 2*2^30); above it the "
                        "weights are split into shards with a model.safetensors.index.json")
    p.add_argument("--merge_lora", action="store_true",
                   help="A LoRA checkpoint (train.py --lora_rank): merge the adapters into their base and write a "
                        "whole HF model; without it the peft adapter folder is written")
    p.add_argument("--base_model", default=None,
                   help="With a LoRA checkpoint: the base model folder (default: the one named in its "
                        "adapter_config.json)")
    args = p.parse_args(argv)

    def body():
        from .adapter_export import adapter_folder, export_adapter

        adapters = adapter_folder(args.checkpoint)
        if adapters:
            check_output(args.output_dir, "--output_dir", [args.checkpoint])
            return export_adapter(adapters, args.output_dir, args.merge_lora, args.dtype, args.base_model,
                                  args.max_shard_size)
        if args.merge_lora:
            raise InputError(f"--merge_lora: {args.checkpoint} holds whole weights, no LoRA adapters")
        return export(args.checkpoint, args.output_dir, args.dtype, args.tokenizer_dir, args.max_shard_size)

    return run_json_cli(body)


if __name__ == "__main__":
    main()
