"""Packing keeps every token, chunks instead of truncating, and pads only the end of a stream."""

import random

import pytest

from colossal_hammer.data.packing import IGNORE_INDEX, OnePerRow, Packer, position_ids

PAD = 0


def pack_all(docs, max_length, labels=None):
    packer = Packer(max_length, pad_id=PAD)
    rows = []
    for i, doc in enumerate(docs):
        rows.extend(packer.add(doc, None if labels is None else labels[i]))
    last = packer.flush()
    if last is not None:
        rows.append(last)
    return rows, packer.stats


def random_docs(seed, n=200, max_len=50):
    rng = random.Random(seed)
    # tokens start at 1 so that padding (0) is distinguishable
    return [[rng.randrange(1, 1000) for _ in range(rng.randrange(1, max_len))] for _ in range(n)]


@pytest.mark.parametrize("max_length", [1, 7, 16, 64, 1000])
def test_every_token_kept_in_order(max_length):
    docs = random_docs(0)
    rows, stats = pack_all(docs, max_length)
    assert all(len(r.input_ids) == max_length == len(r.labels) for r in rows)
    # only the last row may be padded
    assert all(r.num_padding == 0 for r in rows[:-1])
    flat = [t for r in rows for t in r.input_ids[: max_length - r.num_padding]]
    assert flat == [t for d in docs for t in d]
    assert stats.tokens_in == stats.tokens_out == sum(map(len, docs))
    assert stats.rows == len(rows) and stats.padding == rows[-1].num_padding
    assert stats.documents == len(docs)


def test_long_document_is_chunked_not_truncated():
    doc = list(range(1, 26))
    rows, stats = pack_all([doc, [99, 98]], max_length=10)
    assert [r.doc_lengths for r in rows] == [[10], [10], [5, 2]]
    assert rows[2].input_ids == [21, 22, 23, 24, 25, 99, 98, PAD, PAD, PAD]
    assert rows[2].labels[-3:] == [IGNORE_INDEX] * 3
    assert stats.chunked_documents == 1


def test_position_ids_restart_per_document_piece():
    rows, _ = pack_all([[5, 6, 7], [8, 9], [10, 11, 12, 13]], max_length=6)
    assert rows[0].doc_lengths == [3, 2, 1]
    assert position_ids(rows[0].doc_lengths, 6) == [0, 1, 2, 0, 1, 0]
    assert rows[1].doc_lengths == [3] and position_ids(rows[1].doc_lengths, 6) == [0, 1, 2, 3, 4, 5]
    # padding continues the last piece's count
    assert position_ids([2], 5) == [0, 1, 2, 3, 4]


def test_labels_travel_with_their_tokens():
    docs = random_docs(1, n=30)
    labels = [[IGNORE_INDEX if i < len(d) // 2 else t for i, t in enumerate(d)] for d in docs]
    rows, _ = pack_all(docs, 16, labels)
    got = [lab for r in rows for lab in r.labels[: 16 - r.num_padding]]
    assert got == [lab for ls in labels for lab in ls]


def test_one_per_row_counts_like_the_packer():
    docs = random_docs(3, n=20)
    one = OnePerRow()
    rows = [r for d in docs for r in one.add(d)]
    assert one.flush() is None
    assert [r.input_ids for r in rows] == docs and all(r.doc_lengths == [len(r.input_ids)] for r in rows)
    assert (one.stats.rows, one.stats.documents, one.stats.padding) == (len(docs), len(docs), 0)
    assert one.stats.tokens_in == one.stats.tokens_out == sum(map(len, docs))


def test_bad_arguments():
    with pytest.raises(ValueError):
        Packer(0, pad_id=PAD)
    with pytest.raises(ValueError, match="differ in length"):
        list(Packer(4, pad_id=PAD).add([1, 2], [1]))
    with pytest.raises(ValueError, match="empty document"):
        list(Packer(4, pad_id=PAD).add([]))
    with pytest.raises(ValueError):
        list(OnePerRow().add([]))
