"""Whole-document packing (SFT --pack, preference pairs): no document is ever split across rows, every token
of every document lands in exactly one row, in one piece, and rows are filled best fit decreasing."""

import random

import pytest

from colossal_hammer.data.packing import IGNORE_INDEX
from colossal_hammer.data.whole_packing import WholePacker

PAD = 0


def pack(docs, max_length, window=1000, doc_lengths=None):
    packer = WholePacker(max_length, PAD, window=window)
    rows = []
    for i, doc in enumerate(docs):
        rows.extend(packer.add(doc, None, None if doc_lengths is None else doc_lengths[i]))
    rows.extend(packer.drain())
    return rows, packer.stats


def random_docs(seed, n, max_len):
    rng = random.Random(seed)
    # each document's tokens are unique to it (id * 1000 + position), so a split piece is recognisable
    return [[(d + 1) * 1000 + p for p in range(rng.randrange(1, max_len + 1))] for d in range(n)]


def pieces(row):
    out, start = [], 0
    for n in row.doc_lengths:
        out.append(row.input_ids[start:start + n])
        start += n
    return out


@pytest.mark.parametrize("seed,max_length,window", [(0, 64, 1000), (1, 64, 7), (2, 100, 1), (3, 33, 50)])
def test_every_document_lands_whole_in_one_row(seed, max_length, window):
    docs = random_docs(seed, 300, max_length)
    rows, stats = pack(docs, max_length, window)
    assert all(len(r.input_ids) == len(r.labels) == max_length for r in rows)
    got = [piece for r in rows for piece in pieces(r)]
    # every piece is a whole document, from its first token, and every document appears exactly once
    assert sorted(map(tuple, got)) == sorted(map(tuple, docs))
    for r in rows:
        assert sum(r.doc_lengths) + r.num_padding == max_length
        assert r.input_ids[max_length - r.num_padding:] == [PAD] * r.num_padding
        assert r.labels[max_length - r.num_padding:] == [IGNORE_INDEX] * r.num_padding
    assert stats.tokens_in == stats.tokens_out == sum(map(len, docs))
    assert stats.padding == sum(r.num_padding for r in rows) and stats.rows == len(rows)
    assert stats.chunked_documents == 0 and stats.documents == len(docs)


def test_documents_stay_in_their_window():
    docs = random_docs(4, 40, 20)
    rows, _ = pack(docs, 20, window=10)
    for r in rows:
        windows = {(p[0] // 1000 - 1) // 10 for p in pieces(r)}
        assert len(windows) == 1


def test_best_fit_decreasing():
    # sorted: 6 5 4 3 2 -> rows [6,4] (4 best fits the room 4 left by 6), [5,3,2]
    rows, stats = pack([[1] * 5, [2] * 3, [3] * 6, [4] * 2, [5] * 4], max_length=10)
    assert [r.doc_lengths for r in rows] == [[6, 4], [5, 3, 2]]
    assert [r.input_ids[0] for r in rows] == [3, 1] and stats.padding == 0
    # best fit, not first fit: 7 then 5 open two rows (rooms 3 and 5); 3 goes into the tighter room
    rows, _ = pack([[1] * 7, [2] * 5, [3] * 3], max_length=10)
    assert [r.doc_lengths for r in rows] == [[7, 3], [5]]


def test_labels_travel_with_their_document():
    docs = random_docs(5, 50, 30)
    packer = WholePacker(30, PAD, window=16)
    rows = []
    for d in docs:
        rows.extend(packer.add(d, [IGNORE_INDEX] + d[1:]))
    rows.extend(packer.drain())
    for r in rows:
        start = 0
        for n in r.doc_lengths:
            assert r.labels[start:start + n] == [IGNORE_INDEX] + r.input_ids[start + 1:start + n]
            start += n


def test_a_pair_keeps_its_own_split_inside_one_row():
    # preference pairs: chosen + rejected arrive as one unit with their own doc_lengths
    rng = random.Random(6)
    docs, splits = [], []
    for d in range(60):
        chosen, rejected = rng.randrange(1, 20), rng.randrange(1, 20)
        docs.append([(d + 1) * 1000 + p for p in range(chosen + rejected)])
        splits.append([chosen, rejected])
    rows, _ = pack(docs, 40, window=25, doc_lengths=splits)
    seen = []
    for r in rows:
        start = 0
        for chosen, rejected in zip(r.doc_lengths[::2], r.doc_lengths[1::2]):
            unit = r.input_ids[start:start + chosen + rejected]
            d = unit[0] // 1000 - 1
            assert unit == docs[d] and [chosen, rejected] == splits[d]
            seen.append(d)
            start += chosen + rejected
    assert sorted(seen) == list(range(60))


def test_refusals():
    with pytest.raises(ValueError, match="does not fit"):
        list(WholePacker(4, PAD).add([1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="does not fit"):
        list(WholePacker(4, PAD).add([]))
    with pytest.raises(ValueError, match="differ in length"):
        list(WholePacker(4, PAD).add([1, 2], [1]))
    with pytest.raises(ValueError, match="doc_lengths"):
        list(WholePacker(4, PAD).add([1, 2], None, [1, 2]))
    with pytest.raises(ValueError):
        WholePacker(4, PAD, window=0)
