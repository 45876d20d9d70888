"""Write packed rows into K bins per category, streaming, and seal them as `datasets` folders.

Layout: OUT/<category>/bin-00003/ (loadable with `datasets.load_from_disk`). Bin k of every category
together make bucket k, which the sampler visits in order. Rows go to bins by a seeded permutation of
each block of K consecutive rows, so every bin gets an even share of the category from start to end.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
from typing import Dict, List

import numpy as np
import pyarrow as pa

from .packing import PackedRow

COLUMNS = ("input_ids", "labels", "doc_lengths", "num_padding")


def arrow_schema():
    from datasets import Features, Sequence, Value

    features = Features({
        "input_ids": Sequence(Value("int32")),
        "labels": Sequence(Value("int32")),
        "doc_lengths": Sequence(Value("int32")),
        "num_padding": Value("int32"),
    })
    return features, features.arrow_schema


def category_dirname(category: str) -> str:
    """A folder name for a category: kept as is when safe, else escaped (the manifest maps both ways)."""
    if re.fullmatch(r"[^/\\\x00-\x1f.][^/\\\x00-\x1f]*", category) and len(category.encode()) < 200:
        return category
    return "cat-" + category.encode("utf-8").hex()[:64] + "-" + hashlib.sha256(category.encode()).hexdigest()[:8]


def bin_dirname(k: int) -> str:
    return f"bin-{k:05d}"


def is_bin_dirname(name: str) -> bool:
    return re.fullmatch(r"bin-\d{5,}", name) is not None


DATA_FILE = "data-00000-of-00001.arrow"
BIN_FILES = (DATA_FILE, "dataset_info.json", "state.json")  # everything a sealed bin folder holds


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes what goes through it, so no data file is read back to hash it."""

    def __init__(self, path: str):
        super().__init__()
        self.file = open(path, "wb")
        self.sha256 = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.file.write(data)

    def close(self) -> None:
        if not self.closed:
            self.file.close()
        super().close()


class CategoryBins:
    """The K bins of one category. Rows stream straight into the Arrow file `datasets.save_to_disk`
    would write (so nothing is copied at the end); `seal` adds the two small JSON files beside it."""

    def __init__(self, out_dir: str, category: str, num_bins: int, seed: int, tokens_per_batch: int = 1 << 16):
        self.category = category
        self.num_bins = num_bins
        self.dir = os.path.join(out_dir, category_dirname(category))
        for k in range(num_bins):
            os.makedirs(os.path.join(self.dir, bin_dirname(k)), exist_ok=True)
        self.features, self.schema = arrow_schema()
        self.rng = random.Random(f"{seed}:{category}")
        self.order: List[int] = []
        self.rows_per_bin = [0] * num_bins
        # Rows wait per bin as compact int32 arrays (4 bytes a token, not a Python int's 36) and go to disk
        # every `tokens_per_batch` tokens: memory is bounded by bins x batch, whatever the corpus size.
        self.pending: List[List[tuple]] = [[] for _ in range(num_bins)]
        self.pending_tokens = [0] * num_bins
        self.tokens_per_batch = tokens_per_batch
        self.out_dir = out_dir
        self.files = [_HashingFile(self._stream_path(k)) for k in range(num_bins)]
        self.writers = [pa.ipc.new_stream(pa.PythonFile(f, mode="w"), self.schema) for f in self.files]
        self.digests: Dict[str, str] = {}  # data file path relative to out_dir -> sha256, once sealed

    def _stream_path(self, k: int) -> str:
        return os.path.join(self.dir, bin_dirname(k), DATA_FILE)

    def add(self, row: PackedRow) -> None:
        if not self.order:
            self.order = list(range(self.num_bins))
            self.rng.shuffle(self.order)
        k = self.order.pop()
        self.pending[k].append((np.asarray(row.input_ids, dtype=np.int32), np.asarray(row.labels, dtype=np.int32),
                                np.asarray(row.doc_lengths, dtype=np.int32), row.num_padding))
        self.rows_per_bin[k] += 1
        self.pending_tokens[k] += len(row.input_ids)
        if self.pending_tokens[k] >= self.tokens_per_batch:
            self._write(k)

    def _write(self, k: int) -> None:
        rows = self.pending[k]
        if not rows:
            return
        columns = [_list_array([r[i] for r in rows]) for i in range(3)]
        columns.append(pa.array([r[3] for r in rows], type=pa.int32()))
        self.writers[k].write_batch(pa.record_batch(columns, schema=self.schema))
        self.pending[k], self.pending_tokens[k] = [], 0

    def seal(self) -> None:
        """Flush and close every bin, leaving folders that `datasets.load_from_disk` reads."""
        from datasets import DatasetInfo

        for k in range(self.num_bins):
            self._write(k)
            self.writers[k].close()
            self.files[k].close()
            digest = self.files[k].sha256.hexdigest()
            self.digests[os.path.relpath(self._stream_path(k), self.out_dir)] = digest
            bin_dir = os.path.join(self.dir, bin_dirname(k))
            DatasetInfo(features=self.features).write_to_directory(bin_dir)
            state = {"_data_files": [{"filename": DATA_FILE}], "_fingerprint": digest[:16], "_format_columns": None,
                     "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}
            with open(os.path.join(bin_dir, "state.json"), "w", encoding="utf-8") as f:
                json.dump(state, f, indent=2, sort_keys=True)


def _list_array(arrays: List[np.ndarray]) -> pa.ListArray:
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(arrays), type=pa.int32()))


def content_hash(digests: Dict[str, str]) -> str:
    """sha256 over every Arrow data file's relative path and sha256 (as `CategoryBins.digests` holds them),
    in sorted order: the data is hashed once, while it is written."""
    digest = hashlib.sha256()
    for path in sorted(digests):
        digest.update(f"{path}\0{digests[path]}\n".encode())
    return digest.hexdigest()
