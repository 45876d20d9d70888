"""Read prepared Arrow bins back: a dataset over them, a resumable bucketed sampler, and a collator.

Bucket k is bin k of every category (of every dataset folder given). An epoch visits buckets in
order and shuffles inside each with a seed, so a run early in an epoch sees every category in its
proportion. The sampler's position is advanced explicitly by the training loop (`mark_consumed`),
never by counting what a prefetching DataLoader has pulled, so its state is exact.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import random
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .packing import IGNORE_INDEX, position_ids
from ..errors import InputError


class BinnedDataset(Dataset):
    def __init__(self, dataset_dirs: Sequence[str]):
        from datasets import load_from_disk

        self.parts = []  # (dataset, category, bin index)
        self.pad_id = 0
        self.content_hashes = []  # each folder's manifest output_hash: what the data is, byte for byte
        for root in dataset_dirs:
            manifest_path = os.path.join(root, "manifest.json")
            if not os.path.isfile(manifest_path):
                raise InputError(f"{root}: not a prepared dataset (no manifest.json)")
            with open(manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
            self.pad_id = manifest["settings"].get("pad_id", self.pad_id)
            self.content_hashes.append(manifest.get("output_hash", ""))
            for category, figures in sorted(manifest["categories"].items()):
                for k in range(len(figures["bins"])):
                    path = os.path.join(root, figures["dirname"], f"bin-{k:05d}")
                    self.parts.append((load_from_disk(path), category, k))
        self.offsets = [0]
        for dataset, _, _ in self.parts:
            self.offsets.append(self.offsets[-1] + len(dataset))
        self.num_buckets = max((k for _, _, k in self.parts), default=-1) + 1

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict:
        part = bisect.bisect_right(self.offsets, index) - 1
        return self.parts[part][0][index - self.offsets[part]]

    def bucket_ranges(self, k: int) -> List[tuple]:
        """(category, range of global indices) for every part in bucket k."""
        return [(cat, range(self.offsets[i], self.offsets[i + 1])) for i, (_, cat, b) in enumerate(self.parts) if b == k]


class IndexedDataset(Dataset):
    """A BinnedDataset whose rows also carry their index (`pair_index`): DPO looks up each pair's reference
    log-probs by it. Everything else, the sampler's view included, is the wrapped dataset's."""

    def __init__(self, dataset: BinnedDataset):
        self.inner = dataset

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict:
        return {**self.inner[index], "pair_index": index}

    def __getattr__(self, name):
        if name == "inner":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class BucketSampler(Sampler[int]):
    def __init__(self, dataset: BinnedDataset, num_replicas: int, rank: int, seed: int = 42,
                 category_weights: Optional[Dict[str, float]] = None):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.weights = dict(category_weights or {})
        self.epoch = 0
        self.consumed = 0  # samples consumed in this epoch, over all replicas
        self._order = (None, None)  # (epoch, order as int64): built once per epoch, 8 bytes a sample

    def global_order(self, epoch: int) -> np.ndarray:
        """The epoch's sample order, the same on every rank and for every number of replicas."""
        if self._order[0] != epoch:
            self._order = (epoch, np.asarray(self._build_order(epoch), dtype=np.int64))
        return self._order[1]

    def _build_order(self, epoch: int) -> List[int]:
        order = []
        for k in range(self.dataset.num_buckets):
            rng = random.Random(f"{self.seed}:{epoch}:{k}")
            bucket = []
            for category, indices in self.dataset.bucket_ranges(k):
                weight = self.weights.get(category, 1.0)
                whole, fraction = int(weight), weight - int(weight)
                bucket.extend(list(indices) * whole)
                if fraction > 0:
                    bucket.extend(rng.sample(list(indices), round(fraction * len(indices))))
            rng.shuffle(bucket)
            order.extend(bucket)
        return order

    def _remaining(self) -> np.ndarray:
        order = self.global_order(self.epoch)[self.consumed:]
        return order[: len(order) // self.num_replicas * self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self._remaining()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return len(self._remaining()) // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def mark_consumed(self, samples_per_rank: int) -> None:
        """Called by the loop after each micro-batch it trained on."""
        self.consumed += samples_per_rank * self.num_replicas

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "weights": self.weights,
                "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed or state.get("weights", {}) != self.weights:
            raise InputError(f"the checkpoint's data order was made with --seed {state['seed']} and category "
                             f"weights {state.get('weights')}; this run has --seed {self.seed} and {self.weights}: "
                             "resume with the same --seed and --category_weights")
        # `consumed` counts samples over all replicas and the order does not depend on the replica count,
        # so a different data-parallel size re-splits exactly what is left.
        self.epoch, self.consumed = state["epoch"], state["consumed"]


def join_batches(batches: List[Dict[str, torch.Tensor]], pad_id: int) -> Dict[str, torch.Tensor]:
    """Collated batches as one, the shorter ones padded on the right (as the collator pads a row)."""
    width = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0, "position_ids": 0}
    return {key: torch.cat([b[key] if b[key].dim() == 1 else  # per-row keys (pair_index) need no padding
                            torch.nn.functional.pad(b[key], (0, width - b[key].shape[1]), value=fill[key])
                            for b in batches]) for key in batches[0]}


class PackedCollator:
    """Rows → tensors. Attention mask from each row's real length (never from `input_ids != pad`,
    which would mask every EOS when pad = EOS); position ids restart at each document piece, which is
    all the model needs to attend within documents (model/doc_attention.py builds the mask from them).

    The label of every piece's first token is IGNORE_INDEX: its only predictor is the last token of the
    previous document, which a document-masked model cannot see and a model run on one document at a
    time never predicts from. (The row's first label is never predicted either; masking it too makes
    `labels != IGNORE_INDEX` count exactly the predicted tokens.)"""

    def __init__(self, pad_id: int, max_length: Optional[int] = None):
        self.pad_id = pad_id
        self.max_length = max_length  # pad to this instead of the longest row

    def __call__(self, rows: List[dict]) -> Dict[str, torch.Tensor]:
        width = self.max_length or max(len(r["input_ids"]) for r in rows)
        batch = {k: torch.full((len(rows), width), v, dtype=torch.long)
                 for k, v in (("input_ids", self.pad_id), ("labels", IGNORE_INDEX), ("attention_mask", 0),
                              ("position_ids", 0))}
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            if n > width:
                raise ValueError(f"row of {n} tokens is longer than max_length {width}")
            real = n - r["num_padding"]
            batch["input_ids"][i, :n] = torch.as_tensor(r["input_ids"])
            batch["labels"][i, :n] = torch.as_tensor(r["labels"])
            batch["attention_mask"][i, :real] = 1
            batch["position_ids"][i] = torch.tensor(position_ids(r["doc_lengths"], width))
            starts = [0, *itertools.accumulate(r["doc_lengths"])][:-1]
            batch["labels"][i, starts] = IGNORE_INDEX
        if rows and "pair_index" in rows[0]:
            batch["pair_index"] = torch.tensor([r["pair_index"] for r in rows], dtype=torch.long)
        return batch
