"""What eval.perplexity (standalone) and eval.in_training (in the training loop) share: which rows of a
prepared dataset are scored, how a batch's loss, label tokens and bytes are counted, and how summed figures
become loss / perplexity / bits per byte. One copy, so the two can only agree.

Sums, never means of means: a figure is (summed NLL in nats, predicted tokens, bytes those tokens stand
for) added over batches, data-parallel ranks and categories, and divided once at the end.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, List

import numpy as np

from ..data.packing import IGNORE_INDEX


class Tally:
    """key -> [nll nats, predicted tokens, bytes]; `report()` turns the sums into figures."""

    def __init__(self):
        self.sums = defaultdict(lambda: [0.0, 0, 0])

    def add(self, key: str, nll: float, tokens: int, nbytes: int) -> None:
        entry = self.sums[key]
        entry[0] += nll
        entry[1] += tokens
        entry[2] += nbytes

    def report(self) -> Dict[str, dict]:
        return {key: figures(*sums) for key, sums in sorted(self.sums.items())}


def figures(nll: float, tokens: int, nbytes: int) -> dict:
    loss = nll / max(1, tokens)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700)),
            "bits_per_byte": nll / math.log(2) / nbytes if nbytes else float("nan"),
            "tokens": int(tokens), "bytes": int(nbytes)}


def select_rows(dataset, max_tokens: int = 0) -> Dict[str, List[int]]:
    """category -> indices of `dataset` (a one-folder data.loader.BinnedDataset) to score, in stored order
    (bin 0, 1, ...): whole rows until a category has `max_tokens` real tokens (0: every row)."""
    import pyarrow.compute as pc

    chosen: Dict[str, List[int]] = defaultdict(list)
    tokens: Dict[str, int] = defaultdict(int)
    for part, (table, category, _) in enumerate(dataset.parts):
        columns = table.data.table
        if not columns.num_rows:
            continue
        lengths = np.asarray(pc.list_value_length(columns.column("input_ids")), dtype=np.int64)
        real = lengths - np.asarray(columns.column("num_padding"), dtype=np.int64)
        for i, n in enumerate(real.tolist()):
            if max_tokens and tokens[category] >= max_tokens:
                break
            chosen[category].append(dataset.offsets[part] + i)
            tokens[category] += n
    return dict(sorted(chosen.items()))


def label_figures(labels, token_bytes: np.ndarray) -> tuple:
    """(predicted tokens, their bytes) of a collated batch: what the model's loss averages over."""
    predicted = labels[:, 1:]
    ids = predicted[predicted != IGNORE_INDEX].numpy()
    return int(ids.size), int(token_bytes[ids].sum())


def batch_nll(model, batch: dict, count: int) -> float:
    """Summed NLL (nats) of a batch of `count` predicted tokens, from the model's own loss (its mean over
    exactly those tokens), so sharded vocabularies and pipelines compute it as they do in training."""
    loss = model(**batch).loss  # always run: under sharding plugins every rank must join every forward
    return float(loss) * count if count else 0.0
