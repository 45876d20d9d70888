"""A step's loss is the mean over all its label tokens, however they are split into micro-batches and ranks."""

import math

import pytest

from tests.distributed import train
from tests.training.sft_data import tiny_model, uneven_sft_dataset


@pytest.fixture(scope="module")
def sft(tokenizer_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("weighting")
    return uneven_sft_dataset(tokenizer_dir, base / "sft"), tiny_model(tokenizer_dir, base / "model")


def test_batch_accumulation_and_ranks_give_one_loss(sft, tmp_path):
    data, model = sft
    common = ["--pretrained", model, "--dataset", data, "--plugin", "ddp", "--mixed_precision", "fp32",
              "--max_length", "192", "--max_steps", "3", "--lr", "1e-3", "--grad_clip", "100"]
    runs = {
        "b1 x acc2": train(common + ["--batch_size", "1", "--accumulation_steps", "2"], tmp_path / "acc", nproc=1),
        "b2": train(common + ["--batch_size", "2"], tmp_path / "big", nproc=1),
        "2 ranks x b1": train(common + ["--batch_size", "1"], tmp_path / "ranks", nproc=2),
    }
    ref = runs["b2"]["records"]
    # the data really is uneven: one plain mean per micro-batch would weigh rows differently
    assert len({r["label_tokens"] for r in ref}) > 1
    for name, run in runs.items():
        assert [r["label_tokens"] for r in run["records"]] == [r["label_tokens"] for r in ref], name
        for got, want in zip(run["records"], ref):
            assert math.isclose(got["loss"], want["loss"], rel_tol=1e-5), (name, got["loss"], want["loss"])
            assert math.isclose(got["grad_norm"], want["grad_norm"], rel_tol=1e-5), (name, got, want)
