"""colossal_hammer.eval.choice against lm-eval on the same local task: agreement and questions per second.

The benchmark is THUCNews category questions (tests/eval/choice_data.py), the model a random Llama of
the "small" config (hidden 256, 4 layers) on a Llama-style tokenizer trained on the same text. lm-eval
runs the independently written task of tests/eval/lm_eval_task.py. Prints, per method and shots: both
accuracies, the largest log-likelihood difference, the questions whose chosen letter differs, and each
scorer's wall time. Needs lm-eval (the test extras); the machine may be shared, so times are indicative.
Usage: python bench/choice_vs_lm_eval.py [QUESTIONS_PER_SUBJECT]   (default 100, two subjects)
"""

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig  # noqa: E402

from colossal_hammer.data import corpora  # noqa: E402
from colossal_hammer.demo import base_tokenizer  # noqa: E402
from colossal_hammer.eval.choice import evaluate  # noqa: E402
from colossal_hammer.model.build import NAMED_CONFIGS  # noqa: E402
from tests.eval.choice_data import questions, write_layouts  # noqa: E402
from tests.eval.lm_eval_task import lm_eval_scores  # noqa: E402

RUNS = (("letter", 0, "zh"), ("letter", 5, "zh"), ("loglik", 0, "zh"))


def main():
    if importlib.util.find_spec("lm_eval") is None:
        raise SystemExit("error: lm-eval is not installed; pip install -e .[test] (it pins lm-eval==0.4.13)")
    parser = argparse.ArgumentParser(description="eval.choice against lm-eval on one local task")
    parser.add_argument("--per_subject", type=int, default=100, help="questions per subject (2 subjects)")
    per_subject = parser.parse_args().per_subject
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = questions(per_subject=per_subject, dev=5)
        write_layouts(root / "bench", data)
        news = [s for sentences in corpora.chinese_news().values() for s in sentences[:200]]
        base_tokenizer.build_base_tokenizer(corpora.english_paragraphs() + news, str(root / "m"), vocab_size=4000)
        tok = AutoTokenizer.from_pretrained(root / "m")
        config = LlamaConfig(**dict(NAMED_CONFIGS["small"], vocab_size=len(tok)))
        AutoModelForCausalLM.from_config(config).save_pretrained(root / "m")
        n = 2 * per_subject
        print(f"{n} questions, small Llama (hidden 256, 4 layers, vocab {len(tok)}), batch 8 both")
        print(f"{'method':7s} {'shots':>5s} {'ours':>7s} {'lm-eval':>8s} {'max|dll|':>9s} {'differ':>6s} "
              f"{'ours s':>7s} {'lm-eval s':>9s}")
        for run in RUNS:
            method, shots, language = run
            start = time.perf_counter()
            reference = lm_eval_scores(root / "m", data, [run], root / f"lm-{method}-{shots}", batch_size=8)[run]
            theirs_s = time.perf_counter() - start
            start = time.perf_counter()
            report = evaluate(str(root / "m"), str(root / "bench" / "cmmlu"), shots=shots, method=method,
                              batch_size=8, language=language)
            ours_s = time.perf_counter() - start
            accuracy = sum(acc for acc, _, _ in reference.values()) / len(reference)
            diff = max(abs(a - b) for s, (_, scores, _) in reference.items()
                       for row, mine in zip(scores, report["scores"][s]) for a, b in zip(row, mine))
            differ = 0  # questions where lm-eval's choice (acc, or acc_norm for loglik) is not ours
            for s, (_, scores, _) in reference.items():
                for row, q, mine in zip(scores, data[s]["test"], report["predictions"][s]):
                    if method == "loglik":
                        row = [x / len(q[letter]) for x, letter in zip(row, "ABCD")]
                    differ += "ABCD"[max(range(4), key=lambda i: (row[i], -i))] != mine
            print(f"{method:7s} {shots:5d} {report['accuracy']:7.4f} {accuracy:8.4f} {diff:9.2e} {differ:6d} "
                  f"{ours_s:7.1f} {theirs_s:9.1f}")


if __name__ == "__main__":
    main()
