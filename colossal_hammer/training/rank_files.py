"""What each rank holds alone, written by that rank: its optimizer shard, its fp32 masters, its loss scale.

ZeRO, Gemini and 3d partition the optimizer across ranks. The Booster's save gathers every parameter's
states onto rank 0 (all_gather, shard by shard) and its load scatters them back: network traffic, time, and
a save-time peak on rank 0. Here every rank writes the states it owns into optimizer/rank-R-*.safetensors and
reads back exactly those, so nothing is gathered; the price is that such a checkpoint resumes only on the
same layout (same plugin flags and number of processes), which preflight checks.

The files are streamed one tensor at a time (no copy of what the rank holds) and cut at
--checkpoint_shard_size MB, like the weights.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Iterable, Iterator, Optional

import torch

from ..model.shards import Entry, plan_shards, write_file
from .step_guard import mixin_of

SUFFIX = ".safetensors"


def save_tensors(tensors: Iterable[tuple[str, torch.Tensor]], folder: str, stem: str, max_bytes: int,
                 metadata: Optional[dict] = None) -> list[str]:
    """Write (name, tensor) pairs into folder/stem-00001.safetensors, -00002, ... each of at most max_bytes
    (a single larger tensor gets a file of its own), streamed one tensor at a time (model/shards.py).
    Returns the file names."""
    entries = [Entry(name, tuple(t.shape), t.dtype, lambda t=t: [t.detach().cpu()]) for name, t in tensors]
    os.makedirs(folder, exist_ok=True)
    names = []
    for shard in plan_shards(entries, max_bytes) or [[]]:
        names.append(f"{stem}-{len(names) + 1:05d}{SUFFIX}")
        write_file(os.path.join(folder, names[-1]), shard, {k: str(v) for k, v in (metadata or {}).items()})
    return names


def shard_files(folder: str, stem: str) -> list[str]:
    """The files save_tensors wrote for stem (and the single stem.safetensors of older checkpoints)."""
    single = os.path.join(folder, stem + SUFFIX)
    return sorted(glob.glob(os.path.join(glob.escape(folder), f"{glob.escape(stem)}-[0-9][0-9][0-9][0-9][0-9]{SUFFIX}"))) or (
        [single] if os.path.isfile(single) else [])


def read_tensors(folder: str, stem: str) -> tuple[dict, Iterator[tuple[str, torch.Tensor]]]:
    """(metadata of the first file, an iterator over every (name, tensor)), one file open at a time."""
    from safetensors import safe_open

    files = shard_files(folder, stem)
    metadata = {}
    if files:
        with safe_open(files[0], framework="pt") as f:
            metadata = f.metadata() or {}

    def tensors():
        for path in files:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)

    return metadata, tensors()


# ---- optimizer ------------------------------------------------------------------------------------------

def _params(optimizer) -> list:
    """The parameters of the optimizer that does the update, in a fixed order: under ZeRO and Gemini these
    are this rank's fp32 shards, under 3d its tp/pp part."""
    inner = getattr(optimizer, "optim", optimizer)
    return [p for group in inner.param_groups for p in group["params"]]


def _scaler(optimizer):
    mixin = mixin_of(optimizer)
    return getattr(mixin, "grad_scaler", None)


def _layout(optimizer, params: list) -> str:
    """Which slice of the model each saved state belongs to. Gemini's parameters here are empty stand-ins
    between steps; their ranges in the chunks say which slice they are."""
    ranges = getattr(optimizer, "param_to_range", {})
    return json.dumps([[list(p.shape), [int(i) for i in ranges.get(p, ())]] for p in params])


def save_optimizer(optimizer, folder: str, rank: int, max_bytes: int) -> None:
    inner = getattr(optimizer, "optim", optimizer)
    params = _params(optimizer)
    scalars = {}

    def tensors():
        for i, p in enumerate(params):
            for key, value in inner.state.get(p, {}).items():
                if torch.is_tensor(value):
                    yield f"{i}.{key}", value
                else:
                    scalars[f"{i}.{key}"] = value

    save_tensors(tensors(), folder, f"rank-{rank}", max_bytes)
    scaler = _scaler(optimizer)
    extra = {
        "layout": _layout(optimizer, params),
        "scalars": scalars,
        "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in inner.param_groups],
        "grad_scaler": None if scaler is None else {
            "scale": float(scaler.scale.item()), "growth_step": getattr(scaler, "_growth_step", 0),
            "hysteresis_step": getattr(scaler, "_hysteresis_step", 0)},
    }
    with open(os.path.join(folder, f"rank-{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(extra, f, default=lambda value: value.item())  # numpy / 0-dim numbers an optimizer may keep


def has_rank_optimizer(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "rank-0.json"))


def load_optimizer(optimizer, folder: str, rank: int) -> None:
    """Put this rank's saved optimizer states back. Raises ValueError when they were written for another
    partition of the parameters (preflight refuses that earlier, with the flags to use)."""
    inner = getattr(optimizer, "optim", optimizer)
    params = _params(optimizer)
    with open(os.path.join(folder, f"rank-{rank}.json"), encoding="utf-8") as f:
        extra = json.load(f)
    if extra["layout"] != _layout(optimizer, params):
        raise ValueError(f"{folder}: rank {rank}'s optimizer shard was saved for another partition of the model")
    for saved, group in zip(extra["param_groups"], inner.param_groups):
        group.update({k: tuple(v) if isinstance(group.get(k), tuple) else v for k, v in saved.items()})
    for name, value in extra["scalars"].items():
        index, key = name.split(".", 1)
        inner.state[params[int(index)]][key] = value
    _, tensors = read_tensors(folder, f"rank-{rank}")
    with torch.no_grad():
        for name, value in tensors:
            index, key = name.split(".", 1)
            state = inner.state[params[int(index)]]
            if key in state and torch.is_tensor(state[key]):
                state[key].copy_(value)
            else:  # states are made at the first step; a checkpoint of step 0 has none
                state[key] = value if value.dim() == 0 else value.to(params[int(index)].device)
    scaler, saved_scaler = _scaler(optimizer), extra.get("grad_scaler")
    if scaler is not None and saved_scaler is not None:
        scaler._scale = torch.full_like(scaler.scale, saved_scaler["scale"])
        scaler._growth_step = saved_scaler["growth_step"]
        scaler._hysteresis_step = saved_scaler["hysteresis_step"]
