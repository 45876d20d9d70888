"""Masked SFT data with uneven label counts per sample, for the tests of loss weighting and plugins."""

import random

from colossal_hammer.data.sft import main as prepare_sft
from colossal_hammer.data import corpora
from tests.conftest import save_tiny_llama, write_jsonl


def uneven_sft_dataset(tokenizer_dir, out, samples: int = 32, max_length: int = 192, seed: int = 0) -> str:
    """Chats whose replies run from a few characters to dozens, so label counts differ a lot between rows."""
    rng = random.Random(seed)
    news = [s for c in ("体育", "科技", "教育") for s in corpora.chinese_news()[c][:40]]
    rows = [{"messages": [{"from": "human", "content": f"第{i}个问题：{news[i][:rng.randint(4, 20)]}？"},
                          {"from": "assistant", "content": news[i + 1][:rng.choice([2, 5, 30, 50])]}],
             "category": "qa"} for i in range(samples)]
    write_jsonl(out.parent / f"{out.name}-raw" / "a.jsonl", rows)
    prepare_sft(["--data_input_dirs", str(out.parent / f"{out.name}-raw"), "--tokenizer_dir", tokenizer_dir,
                 "--data_output_dirs", str(out), "--max_length", str(max_length), "--num_spliced_dataset_bins", "1",
                 "--num_workers", "1"])
    return str(out)


def tiny_model(tokenizer_dir, out) -> str:
    return str(save_tiny_llama(tokenizer_dir, out, hidden=64, layers=2))
