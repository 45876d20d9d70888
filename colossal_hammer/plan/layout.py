"""How a TrainConfig splits a model over a cluster: group sizes, pipeline stages, Gemini's chunks.

Each rule mirrors Colossal-AI 0.5.0 (file named at each) or colossal_hammer.training.plugins, so the
memory model places exactly what the plugin will.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from dataclasses import dataclass
from typing import List

from .shapes import Shape

ZERO_BUCKET_ELEMENTS = 12 * 2**20  # LowLevelZeroPlugin's reduce_bucket_size_in_m default
GEMINI_MIN_CHUNK = 32 * 2**20  # GeminiPlugin's min_chunk_size_m / search_range_m defaults (Mi elements)
GEMINI_SEARCH_INTERVAL = 1024  # gemini/chunk/utils.py without hidden_dim
GEMINI_GATHERED_CHUNKS = 2  # chunks whole at once in forward/backward: the one in use and the next


@dataclass(frozen=True)
class Layout:
    world: int
    dp: int  # ranks reading different samples
    tp: int = 1
    pp: int = 1
    sp: int = 1  # all_to_all sequence parallelism only (split_gather/ring reuse the tp group)
    seq_split_tp: bool = False  # split_gather/ring: activations between layers split over tp

    @property
    def zero_group(self) -> int:
        """Ranks ZeRO partitions over: dp, and under all_to_all sp the sp ranks too (same gradients)."""
        return self.dp * self.sp


def layout_of(cfg, world: int) -> Layout:
    if cfg.plugin != "3d":
        return Layout(world=world, dp=world)
    sp = cfg.sp if cfg.enable_sequence_parallelism and cfg.sp_mode == "all_to_all" else 1
    return Layout(world=world, dp=world // (cfg.tp * cfg.pp * sp), tp=cfg.tp, pp=cfg.pp, sp=sp,
                  seq_split_tp=cfg.enable_sequence_parallelism and cfg.sp_mode != "all_to_all" and cfg.tp > 1)


def layers_per_stage(layers: int, stages: int) -> List[int]:
    """pipeline/stage_manager.py distribute_layers: the remainder goes to the middle stages."""
    quotient, remainder = divmod(layers, stages)
    counts = [quotient] * stages
    start = stages // 2 - remainder // 2
    for i in range(start, start + remainder):
        counts[i] += 1
    return counts


@dataclass(frozen=True)
class Stage:
    index: int
    layers: int
    first: bool
    last: bool

    def elements(self, shape: Shape, tp: int, multiple: int) -> int:
        """Parameter elements one tp rank of this stage holds (norms whole, matrices and vocabulary split)."""
        n = self.layers * (shape.layer_matrices() // tp + shape.layer_norms())
        if self.first:
            n += shape.embedding(multiple) // tp
        if self.last:
            n += shape.hidden + shape.head(multiple) // tp
        return n


def stages(shape: Shape, pp: int) -> List[Stage]:
    counts = layers_per_stage(shape.layers, pp)
    return [Stage(i, c, i == 0, i == pp - 1) for i, c in enumerate(counts)]


def _unused(sizes: List[int], chunks: "np.ndarray") -> "np.ndarray":
    """gemini/chunk/search_utils.py _get_unused_byte, for every candidate chunk size at once."""
    acc = np.zeros_like(chunks)
    left = np.zeros_like(chunks)
    for s in sizes:
        new = s > left
        acc = np.where(new, acc + left, acc)
        left = np.where(new, chunks, left) - s
    return left + acc


@dataclass(frozen=True)
class Chunks:
    chunk_size: int
    total: int  # elements of all chunks, padding included
    keep_gathered: bool
    count: int


@functools.lru_cache(maxsize=64)
def gemini_chunks(sizes: tuple, dp: int, min_chunk: int = GEMINI_MIN_CHUNK, search_range: int = GEMINI_MIN_CHUNK,
                  interval: int = GEMINI_SEARCH_INTERVAL) -> Chunks:
    """The chunk layout Gemini builds for parameters of these sizes (in order) over `dp` ranks:
    search_chunk_configuration's size search, then ChunkManager.register_tensor's packing."""
    total = sum(sizes)
    if total < min_chunk:  # small models stay one chunk every rank holds whole
        return Chunks(total, total, True, 1)
    mean = total / len(sizes)
    std = math.sqrt(sum((s - mean) ** 2 for s in sizes) / len(sizes))
    searched = [s for s in sizes if s <= mean + 3 * std]  # _filter_exlarge_params
    start = math.ceil(max([min_chunk] + searched) / interval) * interval
    candidates = np.arange(start, start + search_range + 1, interval, dtype=np.int64)
    best = int(candidates[int(np.argmin(_unused(searched, candidates)))])  # the first of equal wastes
    best += -best % dp
    used, left, count = 0, 0, 0
    for s in sizes:
        if s <= left:
            left -= s
            continue
        size = best if s <= best else s + (-s % dp)  # a tensor larger than the chunk gets its own
        used += size
        count += 1
        left = size - s
    return Chunks(best, used, False, count)
