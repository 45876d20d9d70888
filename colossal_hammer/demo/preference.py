"""The demo's news-category question, its SFT answer form, and who may see which headline.

Each THUCNews category's texts are cut, in the package's order, into parts no two uses share:

    [0, n)                       stage 1-2 pretraining text (n = --scale's news_per_category)
    [n, n + 40)                  SFT questions (pipeline.py's corpus)
    [n + 40, n + 80)             validation: what the demo chooses by (LoRA's learning rate, which
                                 categories the DPO pairs target); never reported as the result
    [n + 80, len - heldout)      DPO pairs, at most `dpo_per_category` of them
    [len - heldout, len)         held-out: bits per byte and the category-accuracy questions

A text whose headline appears in an earlier part is left out (the package repeats some texts).
A category too short for all five (时尚 has 563 texts; at full scale n = 700) gives no validation, no
DPO pairs and no accuracy questions: its held-out texts were pretrained on. The pairs ask the SFT's
question about a headline nobody trained on and prefer the right category's answer to the one the SFT
wrongly gave for that category on the validation questions, in the SFT's form.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List
from ..errors import InputError

QUESTION = "这句话属于哪个新闻类别？{}"
ANSWER = "这是一条{}新闻。"
SFT_PER_CATEGORY = 40
VALIDATION_PER_CATEGORY = 40
HELDOUT_PER_CATEGORY = 40


def headline(text: str) -> str:
    """The first sentence, at most 60 characters: what the SFT questions ask about."""
    return text.split("。")[0][:60]


@dataclass
class Splits:
    """Per category, the texts of each later part; disjoint from each other, the pretraining and the SFT."""
    validation: Dict[str, List[str]]
    dpo: Dict[str, List[str]]
    heldout: Dict[str, List[str]]


def splits(news: Dict[str, List[str]], n: int, dpo_per_category: int) -> Splits:
    # The package repeats some texts, within and across categories: a headline of an earlier part (of any
    # category) is dropped from the later parts; held-out first, then validation, then DPO.
    seen = {headline(t) for texts in news.values() for t in texts[: n + SFT_PER_CATEGORY]}
    bounds = {}
    for category in sorted(news):
        start, stop = n + SFT_PER_CATEGORY, len(news[category]) - HELDOUT_PER_CATEGORY
        if stop > start + VALIDATION_PER_CATEGORY:
            bounds[category] = (slice(stop, None), slice(start, start + VALIDATION_PER_CATEGORY),
                                slice(start + VALIDATION_PER_CATEGORY, stop))
    out = Splits({}, {}, {})
    for i, part in enumerate((out.heldout, out.validation, out.dpo)):
        for category, cuts in bounds.items():
            part[category] = [t for t in news[category][cuts[i]] if headline(t) not in seen]
        seen |= {headline(t) for texts in part.values() for t in texts}
    for category in out.dpo:
        out.dpo[category] = out.dpo[category][:dpo_per_category]
    return out


def check_sft_form(sft_jsonl: Path) -> None:
    """The SFT data must ask and answer as QUESTION and ANSWER do, or the pairs would teach another form."""
    with open(sft_jsonl, encoding="utf-8") as f:
        first = json.loads(f.readline())["messages"]
    asked, answered = first[0]["content"], first[1]["content"]
    prefix, suffix = ANSWER.split("{}")
    if not asked.startswith(QUESTION.split("{}")[0]) or not (answered.startswith(prefix) and answered.endswith(suffix)):
        raise InputError(f"{sft_jsonl}:1: messages: the SFT question/answer form changed; update "
                         f"colossal_hammer/demo/preference.py QUESTION and ANSWER to match it")


def pairs(texts: Dict[str, List[str]], confusion: Dict[str, Dict[str, int]], seed: int = 0) -> List[dict]:
    """TRL-style pairs where the SFT fails: a category's headlines, if the SFT answered a wrong category for
    that category on the validation questions (`confusion`: right -> {answered: count}, wrong answers only),
    each with the right category's answer chosen and a confused one's rejected, drawn as often as the SFT
    gave it. A category the SFT never got wrong gives no pair."""
    rng = random.Random(seed)
    out = []
    for category in sorted(texts):
        wrong = {c: k for c, k in confusion.get(category, {}).items() if c != category and k > 0}
        if not wrong:
            continue
        names = sorted(wrong)
        for text in texts[category]:
            rejected = rng.choices(names, weights=[wrong[c] for c in names])[0]
            out.append({"prompt": QUESTION.format(headline(text)), "chosen": ANSWER.format(category),
                        "rejected": ANSWER.format(rejected), "category": "news_category"})
    rng.shuffle(out)
    return out
