"""The demo's DPO pairs and held-out category questions: who sees which headline, and how a choice is scored."""

import json

import pytest

from colossal_hammer.data.sft import BUILTIN_TEMPLATES
from colossal_hammer.data import corpora
from colossal_hammer.demo import accuracy, preference
from colossal_hammer.eval import benchmark
from tests.conftest import save_tiny_llama


@pytest.mark.parametrize("n", [200, 700])
def test_validation_dpo_and_heldout_texts_are_disjoint_from_training_and_each_other(n):
    news = corpora.chinese_news()
    parts = preference.splits(news, n, dpo_per_category=60)
    trained = {preference.headline(t) for ts in news.values() for t in ts[: n + preference.SFT_PER_CATEGORY]}
    for category, sentences in news.items():
        # by headline, what the questions ask about: the package repeats some texts
        mine = {name: {preference.headline(t) for t in getattr(parts, name).get(category, [])}
                for name in ("validation", "dpo", "heldout")}
        assert not trained & (mine["validation"] | mine["dpo"] | mine["heldout"])
        assert not mine["validation"] & mine["dpo"] and not mine["validation"] & mine["heldout"]
        assert not mine["dpo"] & mine["heldout"]
        assert len(parts.dpo.get(category, [])) <= 60
        if category in parts.heldout:
            assert set(parts.heldout[category]) <= set(sentences[-preference.HELDOUT_PER_CATEGORY:])
            assert len(parts.heldout[category]) >= 30 and len(parts.validation[category]) >= 30
            assert len(parts.dpo[category]) == 60
    # and across categories: the package repeats a few texts under two categories
    everyone = {name: [preference.headline(t) for ts in getattr(parts, name).values() for t in ts]
                for name in ("validation", "dpo", "heldout")}
    assert not set(everyone["dpo"]) & (set(everyone["validation"]) | set(everyone["heldout"]))
    assert not set(everyone["validation"]) & set(everyone["heldout"])
    # 时尚 has 563 texts: at n = 700 all but its SFT questions were pretrained on, so it gives no later part
    assert ("时尚" in parts.heldout) == ("时尚" in parts.validation) == ("时尚" in parts.dpo) == (n == 200)
    assert len(parts.heldout) >= 9


def test_pairs_reject_the_categories_the_sft_confused():
    news = corpora.chinese_news()
    dpo = preference.splits(news, 200, dpo_per_category=50).dpo
    # 体育 taken for 娱乐 3 times and for 游戏 once; 科技 for 财经 twice; every other category answered right
    confusion = {"体育": {"娱乐": 3, "游戏": 1}, "科技": {"财经": 2}, "教育": {}}
    pairs = preference.pairs(dpo, confusion)
    assert len(pairs) == 2 * 50
    by_headline = {preference.headline(t): c for c, ts in dpo.items() for t in ts}
    rejected = {"体育": [], "科技": []}
    for p in pairs:
        category = by_headline[p["prompt"].split("？", 1)[1]]
        assert p["chosen"] == f"这是一条{category}新闻。"
        rejected[category].append(p["rejected"])
    assert set(rejected["科技"]) == {"这是一条财经新闻。"}
    assert set(rejected["体育"]) == {"这是一条娱乐新闻。", "这是一条游戏新闻。"}
    assert rejected["体育"].count("这是一条娱乐新闻。") > rejected["体育"].count("这是一条游戏新闻。")  # 3:1
    assert pairs == preference.pairs(dpo, confusion)  # deterministic
    assert preference.pairs(dpo, {}) == []  # no failure, nothing to fix


def test_check_sft_form_refuses_another_form(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"messages": [{"from": "human", "content": "这句话属于哪个新闻类别？某某"},
                                             {"from": "assistant", "content": "这是一条体育新闻。"}]}, ensure_ascii=False))
    preference.check_sft_form(good)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"from": "human", "content": "这句话属于哪个新闻类别？某某"},
                                            {"from": "assistant", "content": "体育"}]}, ensure_ascii=False))
    from colossal_hammer.errors import InputError

    with pytest.raises(InputError, match="form changed"):
        preference.check_sft_form(bad)


def test_questions_and_scores_equal_a_plain_computation(tokenizer_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from colossal_hammer.data.sft import ChatSegmenter
    from colossal_hammer.data.tokenize import PartTokenizer

    news = corpora.chinese_news()
    heldout = {c: news[c][-3:] for c in sorted(news)[:4]}
    path = tmp_path / "q.jsonl"
    assert accuracy.write_questions(path, heldout, sorted(news)) == 12
    tests, _ = benchmark.read_jsonl(str(path))  # the scorer's own reader accepts the file
    questions = tests["thucnews_category"]
    for q, (category, text) in zip(questions, [(c, t) for c in sorted(heldout) for t in heldout[c]]):
        assert q.choices[q.answer] == category and len(set(q.choices)) == 4
        assert q.question == preference.headline(text)

    model_dir = str(save_tiny_llama(tokenizer_dir, tmp_path / "m", seed=3))
    template = BUILTIN_TEMPLATES[2]
    got = accuracy.score(model_dir, questions, template, batch_size=3)
    # plain: one full forward per choice, the reply's summed log-probs, the best choice
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = PartTokenizer(model_dir)
    seg = ChatSegmenter(tok.tokenizer, template)
    picks = []
    for q in questions:
        prompt = [{"role": "user", "content": f"这句话属于哪个新闻类别？{q.question}"}]
        head = seg.render(prompt, True)
        scores = []
        for choice in q.choices:
            reply = seg.render(prompt + [{"role": "assistant", "content": f"这是一条{choice}新闻。"}], False)
            h, r = tok.encode_parts([[head, reply[len(head):]]])[0]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([h + r])).logits[0].float(), -1)
            scores.append(sum(float(logp[len(h) - 1 + i, t]) for i, t in enumerate(r)))
        picks.append(max(range(4), key=lambda i: scores[i]))
    assert got["predictions"] == "".join("ABCD"[p] for p in picks)
    assert got["accuracy"] == pytest.approx(sum(p == q.answer for p, q in zip(picks, questions)) / 12)
    assert got["n"] == 12
    wrong = {}
    for p, q in zip(picks, questions):
        if p != q.answer:
            wrong.setdefault(q.choices[q.answer], {}).setdefault(q.choices[p], 0)
            wrong[q.choices[q.answer]][q.choices[p]] += 1
    assert got["confusion"] == wrong and sum(map(sum, (r.values() for r in wrong.values()))) == round(
        12 * (1 - got["accuracy"]))


def test_accuracy_command_errors_are_one_line(tmp_path):
    import subprocess
    import sys

    from tests.distributed import REPO

    questions = tmp_path / "q.jsonl"
    accuracy.write_questions(questions, {"体育": corpora.chinese_news()["体育"][-2:]}, sorted(corpora.chinese_news()))
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "manifest.json").write_text(json.dumps({"kind": "sft", "chat_template": "x"}))
    cases = [(["--model", "no_equals_sign"], "--model no_equals_sign: give NAME=DIR"),
             (["--model", "a=b", "--data", str(tmp_path / "missing.jsonl")], "missing.jsonl")]
    for extra, expected in cases:
        args = ["--data", str(questions), "--sft_dataset", str(tmp_path / "sft")] + extra
        proc = subprocess.run([sys.executable, "-m", "colossal_hammer.demo.accuracy", *args], cwd=REPO,
                              capture_output=True, text=True)
        assert proc.returncode == 2 and expected in proc.stderr
        assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_lora_lrs_flag_refuses_bad_lists_in_one_line():
    import subprocess
    import sys

    from tests.distributed import REPO

    for bad in ("2e-3,x", "0,1e-3", "1e-3,1e-3"):
        proc = subprocess.run([sys.executable, "-m", "colossal_hammer.demo", "--lora_lrs", bad,
                               "--output_dir", "/nonexistent/never-written"], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 2 and f"--lora_lrs: {bad!r}" in proc.stderr
    from colossal_hammer.demo.pipeline import learning_rates

    assert learning_rates("2e-3,5e-3,1e-2") == [2e-3, 5e-3, 1e-2]
