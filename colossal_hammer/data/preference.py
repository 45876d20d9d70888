"""Preference data for DPO: jsonl pairs → one row per pair, the chosen and the rejected sequence side by side.

Accepted lines (roles as in SFT data: "from" or "role", human/user, assistant/gpt, system):
- TRL: {"prompt": ..., "chosen": ..., "rejected": ...}, each a string or a message list (a string prompt is
  one user turn, a string response one assistant turn); without "prompt", chosen and rejected are whole
  conversations and their longest common leading turns are the prompt (TRL's implicit prompt).
- ColossalChat: {"context": [...], "chosen": [...], "rejected": [...]}.
An optional "category" bins the pair as in SFT. A pair whose chosen and rejected responses tokenize the same is
skipped whatever --on_error says and counted as `identical_pair` (DPO's gradient on it is zero), with a warning.

Each sequence is rendered through the chat template like an SFT exchange (sft.ChatSegmenter): the prompt
with the generation prompt, the response as what the template adds after it (end token included),
tokenized separately so no token straddles the boundary. Only response tokens carry labels. The row is
chosen + rejected with doc_lengths [len(chosen), len(rejected)]: the training collator restarts position
ids at the rejected sequence and document attention keeps the two apart, so a pair is always in one
micro-batch and the sampler's order of rows is the order of pairs.

--max_length bounds the row, both sequences together. A longer pair loses tokens from its prompt's start
(after BOS), the same in both sequences (`truncated_documents`, `truncated_tokens` in the manifest), or,
with --long_pairs skip or when the responses alone do not fit, it is a bad line: an error, or skipped and
counted as `too_long` with --on_error skip.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Tuple

from ..errors import main_with_errors
from . import prepare
from .packing import IGNORE_INDEX
from .prepare import PrepareConfig, run_prepare
from .records import (BAD_MESSAGES, DROPPED_BY_TEMPLATE, EMPTY_REPLY, IDENTICAL_PAIR, MISSING_FIELD, TOO_LONG,
                      RecordProblem, category_field, load_object)
from .sft import ChatSegmenter, Exchange, chat_template, parse_messages, unrendered
from .tokenize import PartTokenizer, load_tokenizer, pad_id

LONG_PAIRS = ("truncate_prompt", "skip")


def _turns(value, field: str, role: str) -> List[dict]:
    """A string is one turn of `role`; a list is parsed as SFT messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if value is None:
        raise RecordProblem(MISSING_FIELD, f"field '{field}' is missing")
    return parse_messages(value, field)


def parse_pair(raw: bytes) -> Tuple[List[dict], List[dict], List[dict], str]:
    """(prompt messages, chosen response messages, rejected response messages, category)."""
    obj = load_object(raw)
    category = category_field(obj)
    chosen = _turns(obj.get("chosen"), "chosen", "assistant")
    rejected = _turns(obj.get("rejected"), "rejected", "assistant")
    prompt_field = "context" if "context" in obj else "prompt"
    if prompt_field in obj:
        prompt = _turns(obj[prompt_field], prompt_field, "user")
    else:  # TRL's implicit prompt: the turns both conversations share
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        while shared and chosen[shared - 1]["role"] == "assistant":
            shared -= 1  # the responses start at the first differing assistant turn
        if shared == 0:
            raise RecordProblem(MISSING_FIELD, "field 'prompt' is missing and 'chosen' and 'rejected' share no "
                                                 "leading turns; give a 'prompt' (or 'context')")
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    if prompt[-1]["role"] == "assistant":
        raise RecordProblem(BAD_MESSAGES, f"field '{prompt_field}': its last turn is an assistant turn; the "
                                          "prompt must end with the user turn the responses answer")
    for field, response in (("chosen", chosen), ("rejected", rejected)):
        for i, m in enumerate(response):
            if m["role"] != "assistant":
                raise RecordProblem(BAD_MESSAGES, f"field '{field}[{i}]' is a {m['role']} turn; a response holds "
                                                  "assistant turns only (put earlier turns in the prompt)")
            if not m["content"].strip():
                raise RecordProblem(EMPTY_REPLY, f"field '{field}[{i}].content' is an empty response; fill it in "
                                                 "or remove the pair")
    return prompt, chosen, rejected, category


class PreferenceWorker:
    def __init__(self, tokenizer_dir: str, max_length: int, template: str, long_pairs: str):
        self.tok = PartTokenizer(tokenizer_dir)
        self.segmenter = ChatSegmenter(self.tok.tokenizer, template)
        self.max_length = max_length
        self.long_pairs = long_pairs

    def _render(self, prompt: List[dict], response: List[dict], field: str) -> Tuple[str, str]:
        """(prompt text with the generation prompt, response text as the template adds it)."""
        head = self.segmenter.render(prompt, generation_prompt=True)
        full = self.segmenter.render(prompt + response, generation_prompt=False)
        if not full.startswith(head):
            raise RecordProblem(BAD_MESSAGES, "chat template does not render this conversation prefix by prefix")
        messages = prompt + response
        missing = unrendered(messages, Exchange(0, len(messages), head, full[len(head):]))
        if missing:
            j = missing[0]
            where = f"{field}[{j - len(prompt)}]" if j >= len(prompt) else f"prompt turn {j}"
            raise RecordProblem(DROPPED_BY_TEMPLATE, f"field '{where}' ({messages[j]['role']}) does not appear in "
                                                       "what the chat template renders; move it or use a template "
                                                       "that keeps it")
        return head, full[len(head):]

    def pair(self, prompt, chosen, rejected):
        """(ids, labels, doc_lengths, tokens cut from the prompts)."""
        head, chosen_text = self._render(prompt, chosen, "chosen")
        head_r, rejected_text = self._render(prompt, rejected, "rejected")
        assert head == head_r  # one prompt, rendered once for both
        prompt_ids, chosen_ids, rejected_ids = self.tok.encode_parts([[head, chosen_text, rejected_text]])[0]
        # rejected_text was encoded as a continuation of chosen_text; as a continuation of the prompt it is the
        # same call (a continuation never depends on what precedes it)
        if chosen_ids == rejected_ids:  # compared as tokens: what DPO would see, whatever the JSON spelling
            raise RecordProblem(IDENTICAL_PAIR, "fields 'chosen' and 'rejected' are identical; a pair needs two "
                                                "different responses")
        over = 2 * len(prompt_ids) + len(chosen_ids) + len(rejected_ids) - self.max_length
        cut = 0
        if over > 0:
            keep_bos = 1 if prompt_ids and prompt_ids[0] == self.tok.bos_id else 0
            cut = (over + 1) // 2
            if self.long_pairs == "skip" or len(prompt_ids) - keep_bos - cut < 1:
                why = "" if self.long_pairs == "skip" else " even with its prompt cut to one token"
                raise RecordProblem(TOO_LONG, f"the pair ({2 * len(prompt_ids) + len(chosen_ids) + len(rejected_ids)}"
                                              f" tokens, chosen and rejected together) is longer than max_length "
                                              f"{self.max_length}{why}")
            prompt_ids = prompt_ids[:keep_bos] + prompt_ids[keep_bos + cut:]
        ids, labels = [], []
        for response in (chosen_ids, rejected_ids):
            ids += prompt_ids + response
            labels += [IGNORE_INDEX] * len(prompt_ids) + response
        return ids, labels, [len(prompt_ids) + len(chosen_ids), len(prompt_ids) + len(rejected_ids)], 2 * cut

    def __call__(self, batch):
        results = []
        for file_index, line_no, raw in batch:
            try:
                prompt, chosen, rejected, category = parse_pair(raw)
                ids, labels, doc_lengths, cut = self.pair(prompt, chosen, rejected)
            except RecordProblem as p:
                results.append(("skip", file_index, line_no, p.reason, p.detail))
                continue
            results.append(("doc", file_index, line_no, category, ids, labels, len(ids) - labels.count(IGNORE_INDEX),
                            None, {"doc_lengths": doc_lengths, "truncated": cut}))
        return results


def build_parser() -> argparse.ArgumentParser:
    parser = prepare.build_parser("Tokenize preference pairs (TRL prompt/chosen/rejected or ColossalChat "
                                  "context/chosen/rejected jsonl) into category-binned Arrow datasets for DPO: one "
                                  "row per pair, loss masks on the responses.")
    for action in parser._actions:
        if action.dest == "max_length":
            action.help = "Tokens per row: a pair's chosen and rejected sequences together (each holds the prompt)."
    parser.add_argument("--llama_version", type=int, choices=(2, 3), default=2,
                        help="Built-in chat template when the tokenizer has none.")
    parser.add_argument("--long_pairs", choices=LONG_PAIRS, default="truncate_prompt",
                        help="A pair longer than --max_length: cut its prompt from the start (after BOS; counted in "
                             "the manifest), or treat it as a bad line (--on_error decides: error, or skip and count).")
    return parser


def main(argv: Optional[List[str]] = None) -> dict:
    args = vars(build_parser().parse_args(argv))
    llama_version = args.pop("llama_version")
    long_pairs = args.pop("long_pairs")
    cfg = PrepareConfig(**args, pack=False)
    result = {}

    def body():
        template = []  # filled by describe(), read by the workers the pipeline starts after it

        def describe():
            template.append(chat_template(load_tokenizer(cfg.tokenizer_dir), llama_version))
            return pad_id(cfg.tokenizer_dir), {"chat_template": template[0], "long_pairs": long_pairs}

        def factory(tokenizer_dir):
            return PreferenceWorker(tokenizer_dir, cfg.max_length, template[0], long_pairs)

        result.update(run_prepare(cfg, "preference", factory, describe))
        identical = sum(f["skipped"].get(IDENTICAL_PAIR, 0) for f in result["files"].values())
        if identical:
            print(f"warning: {identical:,} pair{'s' if identical > 1 else ''} skipped: chosen and rejected are "
                  f"identical (no preference to learn); counted as {IDENTICAL_PAIR} in the manifest", file=sys.stderr)

    main_with_errors(body)
    return result
