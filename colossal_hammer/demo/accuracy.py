"""Category accuracy on held-out headlines, with the multiple-choice scorer, in the SFT's own chat form.

    python -m colossal_hammer.demo.accuracy --data questions.jsonl --sft_dataset DIR \
        --model NAME=DIR [NAME=DIR ...] [--output accuracy.json]

The questions are a jsonl file in colossal_hammer.eval.choice's layout (question = the headline, A-D =
four category names, the right one among them at a random letter), read by its own reader. Each choice
is scored as the answer the SFT was taught: the chat template's prompt for "这句话属于哪个新闻类别？
{headline}" followed by "这是一条{category}新闻。" as the template renders a reply, tokenized the way
prepare_sft_dataset.py / prepare_preference_dataset.py tokenize (prompt and reply apart). The choice with
the highest log-likelihood of its reply wins (eval.choice_scoring: loglikelihoods and pick).

Why not `eval.choice --method letter|loglik`: its C-Eval prompt ("以下是中国关于...考试的单项选择题"
... "答案：") is a form none of these models saw, and the preference pairs teach exactly this
prompt/answer pair, so this asks each model the question the way it was taught to answer it. The
answers differ only in the category's two characters (every THUCNews name has two), so the summed
log-likelihood and lm-eval's per-character acc_norm choose alike.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Dict, List

from ..errors import InputError, command_name, run_cli, write_json
from ..eval import benchmark
from ..eval.benchmark import LETTERS
from .preference import ANSWER, QUESTION, headline


def write_questions(path: Path, heldout: Dict[str, List[str]], categories: List[str], seed: int = 1) -> int:
    """One question per held-out text: its category and three others as A-D. Returns how many."""
    rng = random.Random(seed)
    rows = []
    for category in sorted(heldout):
        for text in heldout[category]:
            options = [category] + rng.sample([c for c in categories if c != category], len(LETTERS) - 1)
            rng.shuffle(options)
            rows.append({"question": headline(text), **dict(zip(LETTERS, options)),
                         "answer": LETTERS[options.index(category)], "subject": "thucnews_category"})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def sft_template(sft_dataset: str) -> str:
    manifest = Path(sft_dataset) / "manifest.json"
    template = json.loads(manifest.read_text(encoding="utf-8")).get("chat_template")
    if not template:
        raise InputError(f"{manifest}:1: chat_template: missing; give a prepare_sft_dataset.py output")
    return template


def score(model_dir: str, questions: List[benchmark.Question], template: str, batch_size: int = 16) -> dict:
    from ..data.sft import ChatSegmenter
    from ..data.tokenize import PartTokenizer
    from ..eval.loading import load_model
    from ..eval.choice_scoring import loglikelihoods, pick

    model, _ = load_model(model_dir, "cpu", use_safetensors=True)
    tok = PartTokenizer(model_dir)
    segmenter = ChatSegmenter(tok.tokenizer, template)
    pairs = []
    for q in questions:
        prompt = [{"role": "user", "content": QUESTION.format(q.question)}]
        head = segmenter.render(prompt, generation_prompt=True)
        for choice in q.choices:
            reply = segmenter.render(prompt + [{"role": "assistant", "content": ANSWER.format(choice)}], False)
            head_ids, reply_ids = tok.encode_parts([[head, reply[len(head):]]])[0]
            pairs.append((head_ids, reply_ids))
    pad = tok.tokenizer.pad_token_id if tok.tokenizer.pad_token_id is not None else 0
    max_length = getattr(model.config, "max_position_embeddings", None) or 4096
    flat = loglikelihoods(model, pairs, batch_size, max_length, pad, "cpu")
    k = len(LETTERS)
    chosen = [pick(flat[i * k:(i + 1) * k], q, "letter") for i, q in enumerate(questions)]
    right = sum(c == q.answer for c, q in zip(chosen, questions))
    return {"accuracy": right / len(questions), "n": len(questions),
            "predictions": "".join(LETTERS[c] for c in chosen), "confusion": confusion(questions, chosen)}


def confusion(questions: List[benchmark.Question], chosen: List[int]) -> Dict[str, Dict[str, int]]:
    """right category -> {wrongly chosen category: count}: which categories the model takes for which."""
    out: Dict[str, Dict[str, int]] = {}
    for q, c in zip(questions, chosen):
        if c != q.answer:
            row = out.setdefault(q.choices[q.answer], {})
            row[q.choices[c]] = row.get(q.choices[c], 0) + 1
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog=command_name(__spec__), description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="Questions jsonl in eval.choice's layout (write_questions)")
    p.add_argument("--sft_dataset", required=True, help="The SFT's prepared dataset: its manifest's chat template")
    p.add_argument("--model", nargs="+", required=True, help="NAME=DIR, HF folders with their tokenizers")
    p.add_argument("--output", default=None,
                   help="Also write {NAME: {accuracy, n, predictions, confusion}, chance} as JSON (confusion: "
                        "right category -> {wrongly chosen category: count})")
    a = p.parse_args(argv)

    def body():
        tests, _ = benchmark.read_jsonl(a.data)
        questions = [q for subject in sorted(tests) for q in tests[subject]]
        template = sft_template(a.sft_dataset)
        report = {"chance": 1 / len(LETTERS), "n": len(questions)}
        for spec in a.model:
            name, sep, folder = spec.partition("=")
            if not sep:
                raise InputError(f"--model {spec}: give NAME=DIR")
            report[name] = score(folder, questions, template)
            print(f"{name}: category accuracy {report[name]['accuracy']:.4f} on {len(questions)} headlines of "
                  f"{a.data} (chance {report['chance']:.2f})", flush=True)
        if a.output:
            write_json(a.output, report)
        return report

    return run_cli(body)


if __name__ == "__main__":
    main()
