"""A small synthetic preference set: chosen responses from one family of sentences, rejected from another,
prompts and response lengths uneven, so the pairs are learnable and the rows differ in length."""

import random

from colossal_hammer.data.preference import main as prepare_preference
from colossal_hammer.data import corpora
from tests.conftest import write_jsonl


def preference_dataset(tokenizer_dir, out, pairs: int = 32, max_length: int = 160, seed: int = 0) -> str:
    rng = random.Random(seed)
    news = corpora.chinese_news()
    prompts, good, bad = news["教育"][:pairs], news["体育"][:40], news["科技"][:40]
    rows = []
    for i in range(pairs):
        prompt = f"第{i}题：{prompts[i][:rng.randint(4, 24)]}？"
        if i % 2:  # half in ColossalChat's format, half in TRL's
            rows.append({"context": [{"from": "human", "content": prompt}],
                         "chosen": [{"from": "assistant", "content": rng.choice(good)[:rng.randint(3, 20)]}],
                         "rejected": [{"from": "assistant", "content": rng.choice(bad)[:rng.randint(3, 20)]}]})
        else:
            rows.append({"prompt": prompt, "chosen": rng.choice(good)[:rng.randint(3, 20)],
                         "rejected": rng.choice(bad)[:rng.randint(3, 20)]})
    write_jsonl(out.parent / f"{out.name}-raw" / "pairs.jsonl", rows)
    prepare_preference(["--data_input_dirs", str(out.parent / f"{out.name}-raw"), "--tokenizer_dir", tokenizer_dir,
                        "--data_output_dirs", str(out), "--max_length", str(max_length),
                        "--num_spliced_dataset_bins", "1", "--num_workers", "1"])
    return str(out)
