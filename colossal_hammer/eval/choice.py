"""Accuracy of a causal LM on multiple-choice benchmarks (C-Eval, CMMLU, MMLU layouts, or jsonl).

    python -m colossal_hammer.eval.choice --model DIR --data ceval-exam/ --split val --shots 5 \
        [--method letter|loglik] [--batch_size 8] [--output report.json]

Each question is one prompt in C-Eval's format (Chinese) or MMLU's (English), with --shots examples
from the same subject's dev split. `letter` compares the log-probabilities of the answer letters after
the prompt (as C-Eval and CMMLU score); `loglik` compares each answer text's log-likelihood per
character (lm-eval's acc_norm). The report gives accuracy per subject, their mean (`accuracy`, the
figure benchmarks publish), the mean over all questions (`micro_accuracy`) and the chance level.
Nothing is downloaded: the README says where the public sets live and how to lay them out.
"""

from __future__ import annotations

import argparse
import os
from typing import Dict, List

from ..errors import (command_name, InputError, check_device, check_output_file, check_positive, require_model, run_cli,
                      write_json)
from ..model.folders import hf_folder_of
from . import benchmark
from .benchmark import LETTERS
from .choice_scoring import continuations, language_of, pick, prompt, score_questions
from .loading import load_model

METHODS = ("letter", "loglik")


def subject_name(bench: benchmark.Benchmark, subject: str, language: str) -> str:
    english, chinese = bench.names.get(subject, (subject.replace("_", " "),) * 2)
    return chinese if language == "zh" else english


def build_prompts(bench: benchmark.Benchmark, shots: int, language: str, method: str) -> Dict[str, List[str]]:
    return {subject: [prompt(q, subject_name(bench, subject, language), bench.dev.get(subject, [])[:shots], language,
                             method) for q in questions] for subject, questions in bench.tests.items()}


def evaluate(model_dir: str, data: str, shots: int = 0, method: str = "letter", batch_size: int = 8,
             split: str = "test", language: str = "auto", device: str = "cpu") -> dict:
    """The report; `scores` (subject -> per question, per choice log-likelihoods) is left out of --output."""
    folder = require_model(hf_folder_of(model_dir, "--model"), "--model")
    if not os.path.exists(data):
        raise InputError(f"--data {data}: no such file or folder")
    check_positive(shots, "--shots", allow_zero=True)
    check_positive(batch_size, "--batch_size")
    check_device(device)
    bench = benchmark.load(data, split, shots)  # before the model loads: bad files fail in a second
    if method == "loglik":
        for questions in bench.tests.values():
            for q in questions:
                for letter, text in zip(LETTERS, q.choices):
                    if not text:
                        raise InputError(f"{q.where}: {letter}: empty; --method loglik scores the choices' texts, "
                                         f"use --method letter")
    if language == "auto":
        language = language_of([q for questions in bench.tests.values() for q in questions])
    prompts = build_prompts(bench, shots, language, method)
    from tqdm import tqdm

    model, tokenizer = load_model(folder, device, use_safetensors=True)
    max_length = getattr(model.config, "max_position_embeddings", None) or 4096
    subjects = list(bench.tests)
    flat_prompts = [p for s in subjects for p in prompts[s]]
    flat_choices = [continuations(q, method, language) for s in subjects for q in bench.tests[s]]
    with tqdm(desc="choice", unit="seq", disable=None) as bar:
        flat_scores = score_questions(model, tokenizer, flat_prompts, flat_choices, batch_size, max_length, device, bar)
    report = {"accuracy": 0.0, "micro_accuracy": 0.0, "n": 0, "chance": 1 / len(LETTERS), "method": method,
              "shots": shots, "split": split, "language": language, "subjects": {}, "subject_n": {},
              "predictions": {}, "scores": {}}
    position, correct = 0, 0
    for subject in subjects:
        questions = bench.tests[subject]
        scores = flat_scores[position: position + len(questions)]
        position += len(questions)
        chosen = [pick(s, q, method) for s, q in zip(scores, questions)]
        right = sum(c == q.answer for c, q in zip(chosen, questions))
        report["subjects"][subject] = right / len(questions)
        report["subject_n"][subject] = len(questions)
        report["predictions"][subject] = "".join(LETTERS[c] for c in chosen)
        report["scores"][subject] = scores
        correct += right
    report["n"] = position
    report["accuracy"] = sum(report["subjects"].values()) / len(subjects)
    report["micro_accuracy"] = correct / position
    return report


def print_table(report: dict) -> None:
    width = max([len("average (macro)")] + [len(s) for s in report["subjects"]])
    print(f"{'subject':{width}s} {'n':>6s} {'accuracy':>9s}")
    for subject, accuracy in report["subjects"].items():
        print(f"{subject:{width}s} {report['subject_n'][subject]:6d} {accuracy:9.4f}")
    print(f"{'average (macro)':{width}s} {report['n']:6d} {report['accuracy']:9.4f}")
    print(f"{'all questions':{width}s} {report['n']:6d} {report['micro_accuracy']:9.4f}")
    print(f"{'chance':{width}s} {'':6s} {report['chance']:9.4f}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog=command_name(__spec__), description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True,
                   help="HF model folder with its tokenizer: an export, an HF download or a checkpoint's step-N")
    p.add_argument("--data", required=True,
                   help="A C-Eval / CMMLU / MMLU folder (split folders of per-subject CSV files) or a .jsonl file "
                        "with question, A, B, C, D, answer[, subject][, split] per line")
    p.add_argument("--split", default="test", choices=("test", "val"),
                   help="Split folder to score (C-Eval withholds its test answers: use val)")
    p.add_argument("--shots", type=int, default=0,
                   help="Examples per prompt, the first of the subject's dev split (all of them if fewer)")
    p.add_argument("--method", default="letter", choices=METHODS,
                   help="letter: log-probability of the answer letter after the prompt (C-Eval, CMMLU); "
                        "loglik: log-likelihood of the answer text per character (lm-eval's acc_norm)")
    p.add_argument("--language", default="auto", choices=("auto", "zh", "en"),
                   help="Prompt language (C-Eval's Chinese format or MMLU's English one); auto: zh when most "
                        "questions hold Chinese characters")
    p.add_argument("--batch_size", type=int, default=8, help="Sequences per forward pass")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default=None,
                   help="Also write the report as JSON: accuracy, micro_accuracy, n, chance, subjects, "
                        "subject_n, predictions")
    args = p.parse_args(argv)

    def body():
        check_output_file(args.output, "--output")
        report = evaluate(args.model, args.data, args.shots, args.method, args.batch_size, args.split,
                          args.language, args.device)
        print_table(report)
        if args.output:
            write_json(args.output, {k: v for k, v in report.items() if k != "scores"})
        return report

    return run_cli(body)


if __name__ == "__main__":
    main()
