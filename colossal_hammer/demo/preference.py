"""The demo's news-category question, its SFT answer form, and who may see which headline.

Each THUCNews category's texts are cut, in the package's order, into parts no two uses share:

    [0, n)                       stage 1-2 pretraining text (n = --scale's news_per_category)
    [n, n + 40)                  SFT questions (pipeline.py's corpus)
    [n + 40, len - heldout)      DPO pairs, at most `dpo_per_category` of them
    [len - heldout, len)         held-out: bits per byte and the category-accuracy questions

A text whose headline appears in an earlier part is left out (the package repeats some texts).
A category too short for all four (时尚 has 563 texts; at full scale n = 900) gives no DPO pairs and
no accuracy questions: its held-out texts were pretrained on. The pairs ask the SFT's question about a
headline nobody trained on and prefer the right category's answer to a wrong one's, in the SFT's form.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, List, Tuple
from ..errors import InputError

QUESTION = "这句话属于哪个新闻类别？{}"
ANSWER = "这是一条{}新闻。"
SFT_PER_CATEGORY = 40
HELDOUT_PER_CATEGORY = 40


def headline(text: str) -> str:
    """The first sentence, at most 60 characters: what the SFT questions ask about."""
    return text.split("。")[0][:60]


def splits(news: Dict[str, List[str]], n: int, dpo_per_category: int) -> Tuple[Dict[str, List[str]],
                                                                             Dict[str, List[str]]]:
    """(DPO texts, held-out texts) per category, disjoint from each other, the pretraining and the SFT."""
    # The package repeats some texts: a headline seen in training is dropped from the later parts.
    trained = {headline(t) for texts in news.values() for t in texts[: n + SFT_PER_CATEGORY]}
    dpo, heldout = {}, {}
    for category in sorted(news):
        texts = news[category]
        start, stop = n + SFT_PER_CATEGORY, len(texts) - HELDOUT_PER_CATEGORY
        if stop > start:
            heldout[category] = [t for t in texts[stop:] if headline(t) not in trained]
            held = {headline(t) for t in heldout[category]}
            dpo[category] = [t for t in texts[start:stop] if headline(t) not in trained | held][:dpo_per_category]
    return dpo, heldout


def check_sft_form(sft_jsonl: Path) -> None:
    """The SFT data must ask and answer as QUESTION and ANSWER do, or the pairs would teach another form."""
    with open(sft_jsonl, encoding="utf-8") as f:
        first = json.loads(f.readline())["messages"]
    asked, answered = first[0]["content"], first[1]["content"]
    prefix, suffix = ANSWER.split("{}")
    if not asked.startswith(QUESTION.split("{}")[0]) or not (answered.startswith(prefix) and answered.endswith(suffix)):
        raise InputError(f"{sft_jsonl}:1: messages: the SFT question/answer form changed; update "
                         f"colossal_hammer/demo/preference.py QUESTION and ANSWER to match it")


def pairs(texts: Dict[str, List[str]], categories: List[str], seed: int = 0) -> List[dict]:
    """One TRL-style pair per headline: the right category's answer chosen, a random wrong one's rejected."""
    rng = random.Random(seed)
    out = []
    for category in sorted(texts):
        for text in texts[category]:
            wrong = rng.choice([c for c in categories if c != category])
            out.append({"prompt": QUESTION.format(headline(text)), "chosen": ANSWER.format(category),
                        "rejected": ANSWER.format(wrong), "category": "news_category"})
    rng.shuffle(out)
    return out
