"""Prompts and scores for multiple-choice questions, the way C-Eval/MMLU prompt and lm-eval scores.

Prompt, in C-Eval's format (Chinese) or Hendrycks' MMLU format (English, "Answer:" and " B"):

    以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n
    {dev question}\nA. ..\nB. ..\nC. ..\nD. ..\n答案：B\n\n      (--shots of these)
    {question}\nA. ..\nB. ..\nC. ..\nD. ..\n答案：

    The following are multiple choice questions (with answers) about {subject}.\n\n ... \nAnswer:

A choice's score is the log-likelihood of its continuation after the prompt ("A" / " A" for the
`letter` method; the choice's text for `loglik`), tokenized as lm-eval does: the prompt plus the
continuation is encoded whole (with the tokenizer's own special tokens, BOS for Llama) and the
continuation is what follows the prompt's tokens. A one-token letter is then exactly the next-token
log-probability C-Eval and CMMLU compare. `loglik` picks the best score per character of the choice's
text (lm-eval's acc_norm). Few-shot examples end with their answer written as the scored continuation
(the letter, or for `loglik` the answer's text), as lm-eval writes them.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Sequence, Tuple

from .benchmark import LETTERS, Question

HEADERS = {"zh": "以下是中国关于{}考试的单项选择题，请选出其中的正确答案。\n\n",
           "en": "The following are multiple choice questions (with answers) about {}.\n\n"}
CUES = {"zh": "\n答案：", "en": "\nAnswer:"}
DELIMITERS = {"zh": "", "en": " "}  # between the cue and the answer, as each benchmark writes it


def language_of(questions: Sequence[Question]) -> str:
    """zh when most questions hold CJK characters, else en."""
    cjk = sum(any("\u4e00" <= ch <= "\u9fff" for ch in q.question) for q in questions)
    return "zh" if 2 * cjk > len(questions) else "en"


def format_question(q: Question, language: str, answer_as: str = "") -> str:
    """The question, its choices and the cue; for a few-shot example (answer_as = the method) also the
    answer, written as that method's continuation: the letter, or the answer's text for loglik."""
    text = q.question + "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, q.choices)) + CUES[language]
    if answer_as:
        text += continuations(q, answer_as, language)[q.answer] + "\n\n"
    return text


def prompt(q: Question, subject_name: str, shots: Sequence[Question], language: str, method: str = "letter") -> str:
    return (HEADERS[language].format(subject_name) + "".join(format_question(s, language, method) for s in shots)
            + format_question(q, language))


def continuations(q: Question, method: str, language: str) -> List[str]:
    return [DELIMITERS[language] + (letter if method == "letter" else choice)
            for letter, choice in zip(LETTERS, q.choices)]


def pick(scores: Sequence[float], q: Question, method: str) -> int:
    """The chosen index: the best log-likelihood, per character of the choice's text for loglik."""
    if method == "loglik":
        scores = [s / max(1, len(choice)) for s, choice in zip(scores, q.choices)]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))  # ties: the first, as numpy.argmax


def encode_pair(tokenizer, context: str, continuation: str, encode=None) -> Tuple[List[int], List[int]]:
    """lm-eval's split: trailing spaces of the context move to the continuation; encode whole, then cut."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation).input_ids
    head = encode(context) if encode else tokenizer(context).input_ids
    return head, whole[len(head):]


def loglikelihoods(model, pairs: Sequence[Tuple[List[int], List[int]]], batch_size: int, max_length: int,
                   pad_id: int, device, bar=None) -> List[float]:
    """Summed log-probability of each continuation after its context, in batched forward passes.

    Pairs whose model input (context + continuation minus its last token) is the same share one row:
    the four one-token letters after a prompt cost one forward pass, as C-Eval's scoring does. Rows are
    right-padded, so padding never moves a real token's position; inputs longer than max_length keep
    their last tokens (lm-eval's left truncation).
    """
    import inspect

    import torch

    # Logits only where a continuation is predicted (HF's logits_to_keep takes the positions): full
    # logits of 8 rows x 2048 tokens x a 32k vocabulary would take 2 GB for nothing.
    keep = "logits_to_keep" in inspect.signature(model.forward).parameters
    rows: Dict[Tuple[int, ...], List[int]] = {}
    for i, (context, continuation) in enumerate(pairs):
        if not continuation:
            raise ValueError(f"empty continuation for pair {i}")
        rows.setdefault(tuple((context + continuation)[:-1][-max_length:]), []).append(i)
    order = sorted(rows, key=len, reverse=True)  # similar lengths together: little padding
    scores = [0.0] * len(pairs)
    for begin in range(0, len(order), batch_size):
        batch = order[begin: begin + batch_size]
        width = len(batch[0])
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, row in enumerate(batch):
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
        positions = sorted({p for row in batch for i in rows[row]
                            for p in range(len(row) - len(pairs[i][1]), len(row))})
        column = {p: c for c, p in enumerate(positions)} if keep else {p: p for p in range(width)}
        extra = {"logits_to_keep": torch.tensor(positions, device=device)} if keep else {}
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **extra).logits
        for r, row in enumerate(batch):
            for i in rows[row]:
                continuation = pairs[i][1]
                where = [column[p] for p in range(len(row) - len(continuation), len(row))]
                logp = torch.log_softmax(logits[r, where].float(), dim=-1)
                target = torch.tensor(continuation, device=logp.device)
                scores[i] = float(logp.gather(1, target[:, None]).sum())
        if bar is not None:
            bar.update(len(batch))
    return scores


def score_questions(model, tokenizer, prompts: Sequence[str], choices: Sequence[List[str]], batch_size: int = 8,
                    max_length: int = 4096, device="cpu", bar=None) -> List[List[float]]:
    """Per question, the log-likelihood of each continuation after its prompt."""
    encode = functools.lru_cache(maxsize=8)(lambda text: tokenizer(text).input_ids)  # a prompt once, not per choice
    pairs, owners = [], []
    for qi, (text, options) in enumerate(zip(prompts, choices)):
        for option in options:
            pairs.append(encode_pair(tokenizer, text, option, encode))
            owners.append(qi)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if bar is not None:
        bar.total = len({tuple((c + k)[:-1][-max_length:]) for c, k in pairs})
    flat = loglikelihoods(model, pairs, batch_size, max_length, pad_id, device, bar)
    out: List[List[float]] = [[] for _ in prompts]
    for qi, s in zip(owners, flat):
        out[qi].append(s)
    return out
