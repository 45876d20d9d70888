"""Bucketed sampler resumes exactly (also across data-parallel sizes); collator masks by length."""

import pytest
import torch

from colossal_hammer.data.loader import BinnedDataset, BucketSampler, PackedCollator
from colossal_hammer.data.pretrain import main as prepare
from colossal_hammer.data import corpora
from colossal_hammer.errors import InputError
from tests.conftest import write_jsonl


@pytest.fixture(scope="module")
def dataset(tokenizer_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("binned")
    news = corpora.chinese_news()
    rows = [{"target": s, "category": c} for c in ("体育", "科技", "财经") for s in news[c][:60]]
    rows += [{"target": p, "category": "english"} for p in corpora.english_paragraphs()[:120]]
    write_jsonl(base / "in" / "a.jsonl", rows)
    prepare(["--data_input_dirs", str(base / "in"), "--tokenizer_dir", tokenizer_dir, "--data_output_dirs",
             str(base / "out"), "--max_length", "64", "--num_spliced_dataset_bins", "4"])
    return BinnedDataset([str(base / "out")])


def batches(sampler, batch_size):
    order = list(sampler)
    return [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def test_buckets_in_order_and_shuffled_within(dataset):
    sampler = BucketSampler(dataset, num_replicas=1, rank=0, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(dataset)))
    bucket_of = {i: k for k in range(dataset.num_buckets) for _, r in dataset.bucket_ranges(k) for i in r}
    assert [bucket_of[i] for i in order] == sorted(bucket_of[i] for i in order)
    # every bucket holds every category
    for k in range(dataset.num_buckets):
        assert {c for c, r in dataset.bucket_ranges(k) if len(r)} == {"体育", "科技", "财经", "english"}
    assert order != sorted(order)
    assert order == list(BucketSampler(dataset, 1, 0, seed=3))
    assert order != list(BucketSampler(dataset, 1, 0, seed=4))


def test_resume_on_two_ranks_gives_the_remaining_sequence(dataset):
    batch_size, k = 3, 5
    straight = [batches(BucketSampler(dataset, 2, rank, seed=1), batch_size) for rank in range(2)]
    states = []
    for rank in range(2):
        s = BucketSampler(dataset, 2, rank, seed=1)
        it = iter(s)
        for _ in range(k):  # train k batches
            [next(it) for _ in range(batch_size)]
            s.mark_consumed(batch_size)
        states.append(s.state_dict())
    for rank in range(2):
        resumed = BucketSampler(dataset, 2, rank, seed=1)
        resumed.load_state_dict(states[rank])
        assert batches(resumed, batch_size) == straight[rank][k:]


def test_resume_with_a_different_data_parallel_size_resplits_exactly(dataset):
    s = BucketSampler(dataset, 2, 0, seed=1)
    s.mark_consumed(10)  # 20 samples consumed over 2 ranks
    state = s.state_dict()
    remaining = s.global_order(0)[20:].tolist()
    seen = []
    for rank in range(3):
        r = BucketSampler(dataset, 3, rank, seed=1)
        r.load_state_dict(state)
        seen.append(list(r))
    merged = [x for trio in zip(*seen) for x in trio]
    assert merged == remaining[: len(remaining) // 3 * 3]


def test_state_with_other_seed_is_refused(dataset):
    with pytest.raises(InputError, match="--seed"):
        BucketSampler(dataset, 1, 0, seed=2).load_state_dict(BucketSampler(dataset, 1, 0, seed=1).state_dict())


def test_category_weights(dataset):
    plain = list(BucketSampler(dataset, 1, 0, seed=1))
    weighted = list(BucketSampler(dataset, 1, 0, seed=1, category_weights={"english": 2.0, "财经": 0.5}))
    english = {i for k in range(dataset.num_buckets) for c, r in dataset.bucket_ranges(k) if c == "english" for i in r}
    finance = {i for k in range(dataset.num_buckets) for c, r in dataset.bucket_ranges(k) if c == "财经" for i in r}
    assert sum(i in english for i in weighted) == 2 * sum(i in english for i in plain)
    assert abs(sum(i in finance for i in weighted) - len(finance) / 2) <= dataset.num_buckets


def test_collator_masks_by_length_not_by_pad_id():
    eos = 2
    rows = [
        {"input_ids": [1, 5, 6, eos, 1, 7, eos, eos], "labels": [-100, 5, 6, eos, -100, 7, eos, -100],
         "doc_lengths": [4, 3], "num_padding": 1},  # pad id == eos: EOS tokens inside stay attended
        {"input_ids": [1, 9, eos], "labels": [-100, 9, eos], "doc_lengths": [3], "num_padding": 0},
    ]
    batch = PackedCollator(pad_id=eos)(rows)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].tolist() == [[1] * 7 + [0], [1, 1, 1, 0, 0, 0, 0, 0]]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert batch["labels"][1].tolist() == [-100, 9, eos] + [-100] * 5
    assert batch["input_ids"].dtype == torch.long


def test_collator_cuts_labels_and_attention_at_document_boundaries():
    from colossal_hammer.model.doc_attention import document_mask

    # Documents without BOS: every first token would be a target predicted from the previous document.
    rows = [
        {"input_ids": [11, 12, 13, 21, 22, 31, 32, 33, 0, 0], "labels": [11, 12, 13, 21, 22, -100, 32, 33, -100, -100],
         "doc_lengths": [3, 2, 3], "num_padding": 2},
        {"input_ids": [41, 42, 43, 44], "labels": [41, 42, 43, 44], "doc_lengths": [4], "num_padding": 0},
    ]
    batch = PackedCollator(pad_id=0)(rows)
    assert batch["labels"].tolist() == [[-100, 12, 13, -100, 22, -100, 32, 33, -100, -100],
                                        [-100, 42, 43, 44] + [-100] * 6]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]
    mask = document_mask(batch["position_ids"], batch["attention_mask"])
    assert mask.shape == (2, 1, 10, 10)
    blocks = [range(0, 3), range(3, 5), range(5, 8), range(8, 10)]  # three documents, then the padding
    for q in range(10):
        block = next(b for b in blocks if q in b)
        assert mask[0, 0, q].nonzero().flatten().tolist() == [k for k in block if k <= q]
    assert mask[1, 0, :4, :4].equal(torch.ones(4, 4, dtype=torch.bool).tril())
    assert not mask[1, 0, :4, 4:].any()  # real tokens never see the padding
