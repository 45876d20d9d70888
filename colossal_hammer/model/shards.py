"""Write HF safetensors shards one tensor at a time, so that memory holds one tensor, never a shard.

`safetensors.torch.save_file` needs every tensor of a file in memory at once. The format is simple
enough to stream instead: an 8-byte little-endian header length, a JSON header giving each tensor's
dtype, shape and byte range, then the raw little-endian bytes in that order. Shapes and dtypes are
known before any tensor is read (from the input headers), so the header is written first and every
tensor is read, cast and written in turn. Files are named and indexed as `save_pretrained` does:
`model.safetensors` alone, or `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Sequence, Tuple

if TYPE_CHECKING:
    import torch

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """'5GB' (10^9, as transformers counts), '500MiB' (2^20) or a number of bytes; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", text.upper())
    if not match or match.group(2) not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a size such as 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _dtype_codes():
    import torch

    return {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
            torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
            torch.bool: "BOOL"}


@dataclass
class Entry:
    """One output tensor: its name, what it will be, and how to produce it when its turn comes: as
    consecutive blocks of rows (dim 0), so that not even one whole tensor needs to be in memory."""
    name: str
    shape: Tuple[int, ...]
    dtype: "torch.dtype"
    produce: Callable[[], Iterable["torch.Tensor"]]

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * self.dtype.itemsize


def plan_shards(entries: Sequence[Entry], max_bytes: int) -> List[List[Entry]]:
    """Consecutive groups of at most max_bytes (a larger tensor alone), in order, as transformers splits."""
    shards: List[List[Entry]] = [[]]
    size = 0
    for entry in entries:
        if shards[-1] and size + entry.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return [shard for shard in shards if shard]


def shard_names(count: int) -> List[str]:
    if count == 1:
        return [WEIGHTS_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def remove_stale_weights(output_dir: str) -> None:
    """An earlier export's files would mix with ours (from_pretrained prefers a stale model.safetensors
    over a new index), so they go first; nothing else in the folder is touched."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if name in (WEIGHTS_NAME, INDEX_NAME) or _SHARD_NAME.fullmatch(name):
            os.remove(os.path.join(output_dir, name))


def write_file(path: str, entries: Sequence[Entry], metadata: Dict[str, str]) -> None:
    import torch

    codes = _dtype_codes()
    header: Dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for entry in entries:
        header[entry.name] = {"dtype": codes[entry.dtype], "shape": list(entry.shape),
                              "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for entry in entries:
            written = 0
            for block in entry.produce():
                block = block.contiguous()
                if block.dtype != entry.dtype or tuple(block.shape[1:]) != tuple(entry.shape[1:]):
                    raise AssertionError(f"{entry.name}: produced {tuple(block.shape)} {block.dtype}, "
                                         f"planned {entry.shape} {entry.dtype}")
                # bytes as they lie in memory (little-endian on every platform torch ships for)
                f.write(block.reshape(-1).view(torch.uint8).numpy().data)
                written += block.numel() * block.element_size()
                del block
            if written != entry.nbytes:
                raise AssertionError(f"{entry.name}: produced {written} bytes, planned {entry.nbytes}")


def write_shards(output_dir: str, entries: Sequence[Entry], max_bytes: int) -> List[str]:
    """Write `entries` as HF safetensors shards (+ index when more than one); return the file names."""
    shards = plan_shards(entries, max_bytes)
    names = shard_names(len(shards))
    remove_stale_weights(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    for name, shard in zip(names, shards):
        write_file(os.path.join(output_dir, name), shard, {"format": "pt"})
    if len(names) > 1:
        index = {"metadata": {"total_size": sum(e.nbytes for e in entries)},
                 "weight_map": {e.name: name for name, shard in zip(names, shards) for e in shard}}
        with open(os.path.join(output_dir, INDEX_NAME), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
    return names
