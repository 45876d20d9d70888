"""Pack whole documents (SFT conversations, preference pairs) into rows: best-fit decreasing within a window.

The pretraining Packer chunks a document that crosses a row, which is right for plain text but wrong for a
conversation: its second half would start a row with restarted positions, its reply trained without its
question. Here a document is never split. Documents are gathered into a window of `window` documents;
each window is sorted longest first (ties in arrival order) and each document goes into the open row
with the least room that still holds it (a new row when none does), as TRL's `bfd` packing does.

Why best fit rather than first fit: both sort longest first and share the same asymptotic worst case
(11/9 of the fewest rows possible); best fit keeps the roomiest rows open for the longer documents still
to come instead of filling the earliest row, and it is what TRL's packing already does, so a dataset
packed here matches what TRL users expect. A window (not the
whole corpus) keeps memory at `window` documents, however large the corpus; every row of a window is
emitted when the window closes, padded to `max_length` (padding carries no loss).

The caller decides what a document longer than a row is (prepare.py counts it as a `too_long` line):
`add()` refuses it, as the Packer refuses an empty one. A unit may bring its own split (`doc_lengths`,
e.g. a pair's chosen and rejected sequences): the split is kept inside the row and never separated.
The output depends only on the documents and their order: no randomness, no clocks.
"""

from __future__ import annotations

import bisect
from typing import Iterator, List, Optional

from .packing import IGNORE_INDEX, PackedRow, PackingStats

WINDOW = 1000  # documents per window: TRL packs per `map` batch, whose default size this is


class WholePacker:
    def __init__(self, max_length: int, pad_id: int, window: int = WINDOW):
        if max_length < 1 or window < 1:
            raise ValueError("max_length and window must be >= 1")
        self.max_length = max_length
        self.pad_id = pad_id
        self.window = window
        self.stats = PackingStats()  # chunked_documents stays 0: nothing is ever split
        self._pending: List[tuple] = []  # (ids, labels, doc_lengths) in arrival order

    def fits(self, length: int) -> bool:
        return 1 <= length <= self.max_length

    def add(self, input_ids: List[int], labels: Optional[List[int]] = None,
            doc_lengths: Optional[List[int]] = None) -> Iterator[PackedRow]:
        """Queue one document; yield the rows of its window once the window is full."""
        labels = list(input_ids) if labels is None else labels
        if len(labels) != len(input_ids):
            raise ValueError(f"labels ({len(labels)}) and input_ids ({len(input_ids)}) differ in length")
        if not self.fits(len(input_ids)):
            raise ValueError(f"a document of {len(input_ids)} tokens does not fit a row of {self.max_length}")
        doc_lengths = list(doc_lengths or [len(input_ids)])
        if sum(doc_lengths) != len(input_ids) or min(doc_lengths) < 1:
            raise ValueError("doc_lengths must be positive and sum to the document's length")
        self.stats.documents += 1
        self.stats.tokens_in += len(input_ids)
        self._pending.append((input_ids, labels, doc_lengths))
        if len(self._pending) >= self.window:
            yield from self._pack_window()

    def drain(self) -> Iterator[PackedRow]:
        """The rows of the last, partial window."""
        yield from self._pack_window()

    def _pack_window(self) -> Iterator[PackedRow]:
        docs, self._pending = self._pending, []
        order = sorted(range(len(docs)), key=lambda i: (-len(docs[i][0]), i))
        rows: List[List[int]] = []  # per row, the indices of its documents in placement order
        rooms: List[tuple] = []  # sorted (room left, row index) of rows that still have room
        for i in order:
            need = len(docs[i][0])
            at = bisect.bisect_left(rooms, (need, -1))  # the tightest room that holds it; earliest row on ties
            if at < len(rooms):
                room, r = rooms.pop(at)
            else:
                room, r = self.max_length, len(rows)
                rows.append([])
            rows[r].append(i)
            if room - need > 0:
                bisect.insort(rooms, (room - need, r))
        for members in rows:
            yield self._emit([docs[i] for i in members])

    def _emit(self, members: List[tuple]) -> PackedRow:
        ids = [t for m in members for t in m[0]]
        labels = [t for m in members for t in m[1]]
        doc_lengths = [n for m in members for n in m[2]]
        padding = self.max_length - len(ids)
        row = PackedRow(ids + [self.pad_id] * padding, labels + [IGNORE_INDEX] * padding, doc_lengths, padding)
        self.stats.rows += 1
        self.stats.padding += padding
        self.stats.tokens_out += len(ids)
        return row
