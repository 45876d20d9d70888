"""Pack tokenized documents into rows of exactly `max_length` tokens, losing none.

The reference pipeline drops each buffer's leftover and truncates long documents. Here a document
longer than a row is chunked across rows, the leftover of every row carries into the next, and only
the last row of a stream is padded (its padding carries no loss). Each row records the lengths of the
document pieces it holds, so training can restart position ids (or use varlen attention) per piece.

Streaming: `add()` yields rows as soon as they are full; memory is one row plus one document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional

IGNORE_INDEX = -100


@dataclass
class PackedRow:
    input_ids: List[int]
    labels: List[int]  # IGNORE_INDEX where a token carries no loss (context, padding)
    doc_lengths: List[int]  # lengths of the document pieces in order; they sum to len - num_padding
    num_padding: int = 0


def position_ids(doc_lengths: List[int], width: int) -> List[int]:
    """Positions restarting at every document piece; padding up to `width` continues the last piece's count."""
    positions = [p for length in doc_lengths for p in range(length)]
    start = doc_lengths[-1] if doc_lengths else 0
    return positions + list(range(start, start + width - len(positions)))


@dataclass
class PackingStats:
    documents: int = 0
    tokens_in: int = 0
    tokens_out: int = 0  # non-padding tokens written to rows; equals tokens_in after flush()
    rows: int = 0
    padding: int = 0
    chunked_documents: int = 0  # documents that span more than one row


class Packer:
    def __init__(self, max_length: int, pad_id: int):
        if max_length < 1:
            raise ValueError("max_length must be >= 1")
        self.max_length = max_length
        self.pad_id = pad_id
        self.stats = PackingStats()
        self._ids: List[int] = []
        self._labels: List[int] = []
        self._docs: List[int] = []

    def add(self, input_ids: List[int], labels: Optional[List[int]] = None) -> Iterator[PackedRow]:
        """Append one document; yield every row it completes."""
        if labels is None:
            labels = list(input_ids)
        if len(labels) != len(input_ids):
            raise ValueError(f"labels ({len(labels)}) and input_ids ({len(input_ids)}) differ in length")
        if not input_ids:
            # The caller decides what an empty document is (skipped and counted in the manifest).
            raise ValueError("empty document")
        self.stats.documents += 1
        self.stats.tokens_in += len(input_ids)
        pieces = 0
        pos = 0
        while pos < len(input_ids):
            room = self.max_length - len(self._ids)
            take = min(room, len(input_ids) - pos)
            self._ids.extend(input_ids[pos : pos + take])
            self._labels.extend(labels[pos : pos + take])
            self._docs.append(take)
            pieces += 1
            pos += take
            if len(self._ids) == self.max_length:
                yield self._emit(padding=0)
        if pieces > 1:
            self.stats.chunked_documents += 1

    def flush(self) -> Optional[PackedRow]:
        """Pad and return the partial last row, if any (padding carries no loss)."""
        if not self._ids:
            return None
        padding = self.max_length - len(self._ids)
        self._ids.extend([self.pad_id] * padding)
        self._labels.extend([IGNORE_INDEX] * padding)
        return self._emit(padding=padding)

    def drain(self) -> Iterator[PackedRow]:
        """What flush() returns, as the stream's remaining rows (the interface WholePacker shares)."""
        last = self.flush()
        if last is not None:
            yield last

    def _emit(self, padding: int) -> PackedRow:
        row = PackedRow(self._ids, self._labels, self._docs, padding)
        self.stats.rows += 1
        self.stats.padding += padding
        self.stats.tokens_out += self.max_length - padding
        self._ids, self._labels, self._docs = [], [], []
        return row


class OnePerRow:
    """One document per row, unpadded (SFT without --pack): the interface and the stats of `Packer`,
    so the caller reads its figures from `stats` either way."""

    def __init__(self):
        self.stats = PackingStats()

    def add(self, input_ids: List[int], labels: Optional[List[int]] = None,
            doc_lengths: Optional[List[int]] = None) -> Iterator[PackedRow]:
        """`doc_lengths`: the row's own split into documents (a preference pair: chosen, rejected)."""
        labels = list(input_ids) if labels is None else labels
        if len(labels) != len(input_ids) or not input_ids:
            raise ValueError("labels and input_ids must be non-empty and of one length")
        if doc_lengths is not None and (sum(doc_lengths) != len(input_ids) or min(doc_lengths) < 1):
            raise ValueError("doc_lengths must be positive and sum to the row's length")
        self.stats.documents += 1
        self.stats.rows += 1
        self.stats.tokens_in += len(input_ids)
        self.stats.tokens_out += len(input_ids)
        yield PackedRow(input_ids, labels, list(doc_lengths or [len(input_ids)]), 0)

    def flush(self) -> Optional[PackedRow]:
        return None

    def drain(self) -> Iterator[PackedRow]:
        return iter(())
