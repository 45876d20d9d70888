"""python -m colossal_hammer.data.clean on real text (corpora.py): every exact duplicate removed, every near
duplicate at the documented threshold, no unique document; the report's counts match what was planted; filters
that keep Chinese text and drop junk; bad lines named or counted; the same output on every run."""

import gzip
import json
import random
import subprocess
import sys
from itertools import combinations

import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter
from datatrove.utils.text import TextNormConfig, simplify_text

from colossal_hammer.data import corpora
from colossal_hammer.data.clean import filters
from colossal_hammer.data.clean.cli import clean
from colossal_hammer.data.clean.steps import record_text
from colossal_hammer.data.clean.words import WORDS
from colossal_hammer.errors import InputError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def chinese_docs(per_category=6, sentences=6):
    news = corpora.chinese_news()
    return [(cat, "\n".join(news[cat][i * sentences:(i + 1) * sentences]))
            for cat in sorted(news) for i in range(per_category)]


def english_docs(n=30):
    paragraphs = [p for p in corpora.english_paragraphs() if len(p) > 300]
    return [("english", "\n\n".join(paragraphs[6 * i:6 * i + 6])) for i in range(n)]


def shingles(text, n=5):
    words = WORDS.word_tokenize(simplify_text(text, TextNormConfig()))
    return {tuple(words[i:i + n]) for i in range(max(0, len(words) - n + 1))}


def jaccard(a, b):
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / max(1, len(sa | sb))


def changed(text, rng, k=3):
    """The text with k characters replaced: a near duplicate."""
    chars = list(text)
    for pos in rng.sample([i for i, c in enumerate(chars) if not c.isspace()], k):
        chars[pos] = "X" if chars[pos] != "X" else "Y"
    return "".join(chars)


def planted_corpus(tmp_path, seed=0):
    """Unique documents, exact copies (some in another category, file or folder, some differing only in case
    and spacing) and near copies (3 characters changed), shuffled over three files in two folders."""
    rng = random.Random(seed)
    unique = []
    for cat, text in chinese_docs() + english_docs():  # unique: not even near another (the sources repeat a little)
        if all(jaccard(text, other) < 0.2 for _, other in unique):
            unique.append((cat, text))
    assert len(unique) >= 80
    groups = [[{"target": text, "category": cat}] for cat, text in unique]
    exact_copies = near_copies = 0
    for g in rng.sample(range(len(groups)), 24):
        original = groups[g][0]
        if exact_copies < 14:
            text = original["target"]
            variants = [text, "  " + text.replace("\n", " \n ") + " ", text.upper()] if original["category"] == \
                "english" else [text, text + "\n"]
            groups[g].append({"target": rng.choice(variants), "category": rng.choice([original["category"], "copies"])})
            exact_copies += 1
            if exact_copies % 5 == 0:  # a third copy now and then
                groups[g].append(dict(original))
                exact_copies += 1
        else:
            groups[g].append({"target": changed(original["target"], rng), "category": original["category"]})
            near_copies += 1
    records = [(k, r) for k, g in enumerate(groups) for r in g]
    rng.shuffle(records)
    paths = [tmp_path / "in" / "a" / "one.jsonl", tmp_path / "in" / "a" / "two.jsonl.gz",
             tmp_path / "in" / "b" / "three.jsonl"]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    handles = [open(paths[0], "w", encoding="utf-8"), gzip.open(paths[1], "wt", encoding="utf-8"),
               open(paths[2], "w", encoding="utf-8")]
    for i, (_, record) in enumerate(records):
        handles[i % 3].write(json.dumps(record, ensure_ascii=False) + "\n")
    for h in handles:
        h.close()
    return groups, exact_copies, near_copies


def run(tmp_path, out, *flags):
    result = clean(["--data_input_dirs", f"{tmp_path / 'in' / 'a'},{tmp_path / 'in' / 'b'}", "--output_dir",
                    str(tmp_path / out), "--workers", "1", *flags])
    kept = []
    for path in sorted((tmp_path / out).glob("*.jsonl")):
        kept += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return result, kept


def figures(records):
    out = {}
    for r in records:
        entry = out.setdefault(r.get("category", "default"), {"documents": 0, "bytes": 0})
        entry["documents"] += 1
        entry["bytes"] += len(record_text(r).encode("utf-8"))
    return dict(sorted(out.items()))


def removed(report, stage):
    (entry,) = [s for s in report["stages"] if s["stage"] == stage]
    return sum(v["documents"] for v in entry["removed"].values()), entry


def test_exact_and_near_duplicates_removed_and_no_unique_document(tmp_path):
    groups, exact_copies, near_copies = planted_corpus(tmp_path)
    # the planted pairs are what they claim: near copies far above the threshold, unique documents far below
    near = [jaccard(g[0]["target"], g[1]["target"]) for g in groups if len(g) == 2 and g[1]["target"] != g[0]["target"]
            and record_text(g[1]).casefold().split() != record_text(g[0]).casefold().split()]
    assert len(near) == near_copies >= 10 and min(near) >= 0.85
    uniques = [g[0]["target"] for g in groups]
    assert max(jaccard(a, b) for a, b in combinations(uniques, 2)) < 0.2
    report, kept = run(tmp_path, "out", "--filters", "none", "--tasks", "3")
    # every group (a unique document with its copies) keeps exactly one member: no unique document lost
    member_of = {json.dumps(r, sort_keys=True, ensure_ascii=False): k for k, g in enumerate(groups) for r in g}
    survivors = [member_of[json.dumps(r, sort_keys=True, ensure_ascii=False)] for r in kept]
    assert sorted(survivors) == list(range(len(groups)))
    # the report's counts are what was planted, and what the files say
    every = [r for g in groups for r in g]
    assert report["input"]["categories"] == figures(every)
    assert report["output"]["categories"] == figures(kept)
    assert removed(report, "exact")[0] == exact_copies
    assert removed(report, "minhash")[0] == near_copies
    assert report["totals"]["documents_in"] == len(every) and report["totals"]["documents_out"] == len(groups)
    stage = removed(report, "exact")[1]
    assert stage["rules"] == {"duplicate": exact_copies} and len(stage["examples"]["duplicate"]) == 3
    assert report["settings"]["minhash_threshold"] == pytest.approx((1 / 14) ** (1 / 8), abs=1e-4)
    written = json.loads((tmp_path / "out" / "clean_report.json").read_text(encoding="utf-8"))
    assert written["totals"] == report["totals"]
    # exact dedup alone leaves the near copies; the same flags give the same bytes again, whatever --workers
    exact_only, kept_exact = run(tmp_path, "exact", "--filters", "none", "--dedup", "exact", "--tasks", "3")
    assert len(kept_exact) == len(groups) + near_copies
    again, _ = run(tmp_path, "again", "--filters", "none", "--tasks", "3", "--workers", "2")
    for name in ["clean_report.json"] + sorted(p.name for p in (tmp_path / "out").glob("*.jsonl")):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name


def test_filters_keep_chinese_text_and_drop_junk(tmp_path):
    docs = chinese_docs(per_category=8) + [("reviews", "\n".join(corpora.chinese_reviews()[i:i + 12]))
                                           for i in range(0, 240, 12)]
    junk = {
        "repeated": "点击这里购买最新产品。\n" * 40,
        "lorem": "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 12,
        "menu": "\n".join(["首页", "新闻", "体育", "娱乐", "财经", "科技", "汽车", "房产", "教育", "游戏"] * 3),
        "short": "太短了。",
    }
    rows = [{"text": t, "category": c} for c, t in docs] + [{"text": t, "category": "junk"} for t in junk.values()]
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "b").mkdir()
    with open(tmp_path / "in" / "a" / "docs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (tmp_path / "in" / "b" / "empty.jsonl").write_text("\n")
    report, kept = run(tmp_path, "out", "--dedup", "none")
    kept_texts = {r["text"] for r in kept}
    assert not kept_texts & set(junk.values())  # every piece of junk removed
    chinese_kept = sum(1 for _, t in docs if t in kept_texts)
    assert chinese_kept >= 0.95 * len(docs), (chinese_kept, len(docs), report["stages"])
    assert report["output"]["categories"] == figures(kept)
    rules = {s["stage"]: s["rules"] for s in report["stages"]}
    assert rules["length"] == {"too_short": 1}
    # the calibration is what keeps them: datatrove's stock thresholds (with the same offline word splitter)
    stock_quality = GopherQualityFilter(language=WORDS)
    stock_c4 = C4QualityFilter(language=WORDS)
    for stock in (stock_quality, stock_c4):
        dropped = sum(1 for i, (_, t) in enumerate(docs) if stock.filter(Document(text=t, id=str(i))) is not True)
        assert dropped >= 0.9 * len(docs), type(stock).__name__
    ours = filters.build("gopher_quality", filters.FILTERS["gopher"][1][1], None, 20, 10 ** 6)
    assert sum(1 for i, (_, t) in enumerate(docs) if ours.filter(Document(text=t, id=str(i))) is not True) \
        <= 0.03 * len(docs)


def test_bad_lines_named_or_counted(tmp_path):
    (tmp_path / "in" / "a").mkdir(parents=True)
    (tmp_path / "in" / "b").mkdir()
    good = {"target": chinese_docs(1)[0][1]}
    (tmp_path / "in" / "a" / "x.jsonl").write_text(json.dumps(good, ensure_ascii=False) + "\n{not json\n\n" +
                                                   json.dumps({"target": 3}) + "\n", encoding="utf-8")
    (tmp_path / "in" / "b" / "y.jsonl").write_text(json.dumps(good, ensure_ascii=False) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "colossal_hammer.data.clean", "--data_input_dirs",
           f"{tmp_path / 'in' / 'a'},{tmp_path / 'in' / 'b'}", "--output_dir", str(tmp_path / "out"), "--workers", "1"]
    failed = subprocess.run(cmd, capture_output=True, text=True)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1] == \
        f"error: {tmp_path / 'in' / 'a' / 'x.jsonl'}:2: malformed JSON: Expecting property name enclosed in double " \
        f"quotes at column 2"
    assert not (tmp_path / "out").exists()
    report, kept = run(tmp_path, "out", "--on_error", "skip")
    assert report["input"]["bad_lines"] == {"malformed_json": 1, "non_string_field": 1}
    assert [e["id"] for e in report["input"]["bad_line_examples"]] == [f"{tmp_path / 'in' / 'a' / 'x.jsonl'}:{n}"
                                                                       for n in (2, 4)]
    assert kept == [good]  # the two copies of the good line are one
    # a second run does not overwrite without being asked, and with --overwrite replaces its own output only
    with pytest.raises(InputError, match="exists; remove it or pass --overwrite"):
        clean(["--data_input_dirs", str(tmp_path / "in" / "b"), "--output_dir", str(tmp_path / "out")])
    _, kept = run(tmp_path, "out", "--on_error", "skip", "--overwrite", "--dedup", "none")
    assert len(kept) == 2


def test_words_without_downloads():
    assert WORDS.word_tokenize("人工智能，AI's user-defined 3.14 (x);") == \
        ["人", "工", "智", "能", "，", "AI's", "user-defined", "3.14", "(", "x", ");"]
    assert WORDS.sent_tokenize("第一句。第二句！Third one. Fourth\nfifth") == \
        ["第一句。", "第二句！", "Third one.", "Fourth", "fifth"]
    text = "你好。 再见！"
    assert [text[a:b] for a, b in WORDS.span_tokenize(text)] == ["你好。", "再见！"]
