"""SFT data: {"messages": [{"from": "human"|"assistant"|"system", "content": ...}], "category": ...} lines
→ rows with loss on assistant turns only (their end token included).

A conversation is rendered through the tokenizer's chat template (or a built-in Llama-2 / Llama-3
one), cut into segments by rendering growing prefixes of it, and each segment is tokenized on its
own: an assistant reply is everything the template adds after the generation prompt, so role
headers carry no loss and no token straddles a turn boundary.
"""

from __future__ import annotations

import argparse
import functools
from typing import List, Optional, Tuple

from .packing import IGNORE_INDEX
from . import prepare
from ..errors import main_with_errors
from .prepare import PrepareConfig, run_prepare
from .records import BAD_MESSAGES, EMPTY_TEXT, TOO_LONG, RecordProblem, load_object, string_field
from .tokenize import PartTokenizer, pad_id

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
LLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
BUILTIN_TEMPLATES = {2: LLAMA2_TEMPLATE, 3: LLAMA3_TEMPLATE}
ROLES = {"human": "user", "user": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


def parse_conversation(raw: bytes) -> Tuple[List[dict], str]:
    obj = load_object(raw)
    category = string_field(obj, "category", "default")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RecordProblem(BAD_MESSAGES, "field 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordProblem(BAD_MESSAGES, f"field 'messages[{i}]' must be an object")
        role = m.get("from", m.get("role"))
        if role not in ROLES:
            raise RecordProblem(BAD_MESSAGES, f"field 'messages[{i}].from' must be one of human, assistant, system")
        content = m.get("content")
        if not isinstance(content, str):
            raise RecordProblem(BAD_MESSAGES, f"field 'messages[{i}].content' must be a string")
        out.append({"role": ROLES[role], "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise RecordProblem(EMPTY_TEXT, "no non-empty assistant turn in 'messages'")
    return out, category


class ChatSegmenter:
    """Conversation → [(text, is_assistant_reply)] through a chat template."""

    def __init__(self, tokenizer, llama_version: int):
        self.tokenizer = tokenizer
        self.template = tokenizer.chat_template or BUILTIN_TEMPLATES[llama_version]

    def render(self, messages, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def segments(self, messages: List[dict]) -> List[Tuple[str, bool]]:
        out, done = [], ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], generation_prompt=True) if i else ""
            full = self.render(messages[: i + 1], generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise RecordProblem(BAD_MESSAGES, "chat template does not render this conversation prefix by prefix")
            if prompt[len(done):]:
                out.append((prompt[len(done):], False))
            out.append((full[len(prompt):], True))
            done = full
        return out


class SFTWorker:
    def __init__(self, tokenizer_dir: str, max_length: int, llama_version: int):
        self.tok = PartTokenizer(tokenizer_dir)
        self.segmenter = ChatSegmenter(self.tok.tokenizer, llama_version)
        self.max_length = max_length

    def example(self, messages: List[dict]) -> Tuple[List[int], List[int]]:
        segments = self.segmenter.segments(messages)
        encoded = self.tok.encode_parts([[text for text, _ in segments]])[0]
        ids, labels, keep = [], [], 0
        for (_, is_reply), seg_ids in zip(segments, encoded):
            ids += seg_ids
            labels += seg_ids if is_reply else [IGNORE_INDEX] * len(seg_ids)
            if is_reply and len(ids) <= self.max_length:
                keep = len(ids)  # the longest run of whole leading turns that fits
        if keep == 0:
            raise RecordProblem(TOO_LONG, f"the first exchange alone is longer than max_length {self.max_length}")
        return ids[:keep], labels[:keep]

    def __call__(self, batch):
        results = []
        for file_index, line_no, raw in batch:
            try:
                messages, category = parse_conversation(raw)
                ids, labels = self.example(messages)
            except RecordProblem as p:
                results.append(("skip", file_index, line_no, p.reason, p.detail))
                continue
            results.append(("doc", file_index, line_no, category, ids, labels, len(ids) - labels.count(IGNORE_INDEX)))
        return results


def build_parser() -> argparse.ArgumentParser:
    parser = prepare.build_parser("Tokenize chat jsonl into category-binned Arrow datasets for SFT "
                                  "(loss on assistant turns).")
    parser.add_argument("--llama_version", type=int, choices=(2, 3), default=2,
                        help="Built-in chat template when the tokenizer has none.")
    parser.add_argument("--pack", action="store_true", help="Pack several conversations per row (boundaries kept).")
    return parser


def main(argv: Optional[List[str]] = None) -> dict:
    args = vars(build_parser().parse_args(argv))
    llama_version = args.pop("llama_version")
    cfg = PrepareConfig(**args)
    result = {}

    def body():
        factory = functools.partial(SFTWorker, max_length=cfg.max_length, llama_version=llama_version)
        result.update(run_prepare(cfg, "sft", factory, pad_id(cfg.tokenizer_dir)))

    main_with_errors(body)
    return result
