"""SFT data: {"messages": [{"from": "human"|"assistant"|"system", "content": ...}], "category": ...} lines
→ rows with loss on assistant turns only (their end token included).

A conversation is rendered through the tokenizer's chat template (or a built-in Llama-2 / Llama-3
one), cut into segments by rendering growing prefixes of it, and each segment is tokenized on its
own: an assistant reply is everything the template adds after the generation prompt, so role
headers carry no loss and no token straddles a turn boundary.

Nothing is dropped without a count. A conversation keeps its longest run of whole leading exchanges
(user/system turns and the reply that follows); it is cut before the first exchange that is longer
than --max_length (`too_long`), has an empty reply (`empty_reply`: it would teach "question → end
token"), or holds a message the template renders no trace of (`dropped_by_template`, e.g. a system
message after the first turn under the Llama-2 template), and trailing turns with no reply are cut
(`no_reply`). The manifest counts the cut turns and their tokens by reason; a conversation whose first
exchange is cut is a bad line (an error, or skipped and counted with --on_error skip).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List, Optional, Tuple

from .packing import IGNORE_INDEX
from . import prepare
from ..errors import main_with_errors
from .prepare import PrepareConfig, run_prepare
from .records import (BAD_MESSAGES, DROPPED_BY_TEMPLATE, EMPTY_REPLY, EMPTY_TEXT, NO_REPLY, TOO_LONG, RecordProblem,
                      category_field, load_object, string_field)
from .tokenize import PartTokenizer, load_tokenizer, pad_id
from .whole_packing import WINDOW

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


def parse_messages(messages, field: str) -> List[dict]:
    """A jsonl message list ({"from" or "role", "content"} objects) as template messages ({"role", "content"})."""
    if not isinstance(messages, list) or not messages:
        raise RecordProblem(BAD_MESSAGES, f"field '{field}' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordProblem(BAD_MESSAGES, f"field '{field}[{i}]' must be an object")
        role = m.get("from", m.get("role"))
        if role not in ROLES:
            raise RecordProblem(BAD_MESSAGES, f"field '{field}[{i}].from' must be one of human, assistant, system")
        content = m.get("content")
        if not isinstance(content, str):
            raise RecordProblem(BAD_MESSAGES, f"field '{field}[{i}].content' must be a string")
        out.append({"role": ROLES[role], "content": content})
    return out


def parse_conversation(raw: bytes) -> Tuple[List[dict], str]:
    obj = load_object(raw)
    category = category_field(obj)
    out = parse_messages(obj.get("messages"), "messages")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise RecordProblem(EMPTY_TEXT, "no non-empty assistant turn in 'messages'")
    return out, category


def chat_template(tokenizer, llama_version: int) -> str:
    """The jinja template conversations are rendered with: the tokenizer's own, else the built-in one."""
    if tokenizer.chat_template:
        return tokenizer.get_chat_template()  # a named-template dict resolves to its default
    return BUILTIN_TEMPLATES[llama_version]


@dataclass
class Exchange:
    start: int  # index of its first message
    end: int  # one past its last message (the reply, or the conversation's end for trailing turns)
    prompt: str  # what the template adds before the reply: role headers, user and system turns
    reply: str  # the reply as rendered, end token included; "" for trailing turns without a reply


class ChatSegmenter:
    """Conversation → exchanges, through a chat template rendered prefix by prefix."""

    def __init__(self, tokenizer, template: str):
        self.tokenizer = tokenizer
        self.template = template

    def render(self, messages, generation_prompt: bool) -> str:
        if not messages:
            return ""
        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                      add_generation_prompt=generation_prompt)
        except Exception as e:  # noqa: BLE001 - jinja's TemplateError, raise_exception(...) in the template
            raise RecordProblem(BAD_MESSAGES, f"the chat template refuses this conversation: {e}") from None

    def exchanges(self, messages: List[dict]) -> List[Exchange]:
        out, done, start = [], "", 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], generation_prompt=True)
            full = self.render(messages[: i + 1], generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise RecordProblem(BAD_MESSAGES, "chat template does not render this conversation prefix by prefix")
            out.append(Exchange(start, i + 1, prompt[len(done):], full[len(prompt):]))
            done, start = full, i + 1
        if start < len(messages):
            full = self.render(messages, generation_prompt=False)
            if not full.startswith(done):
                raise RecordProblem(BAD_MESSAGES, "chat template does not render this conversation prefix by prefix")
            out.append(Exchange(start, len(messages), full[len(done):], ""))
        return out


def unrendered(messages: List[dict], exchange: Exchange) -> List[int]:
    """Indices of the exchange's messages whose text does not appear, in order, in what the template rendered."""
    text, pos, missing = exchange.prompt + exchange.reply, 0, []
    for j in range(exchange.start, exchange.end):
        found = text.find(messages[j]["content"].strip(), pos)
        if found < 0:
            missing.append(j)
        else:
            pos = found + len(messages[j]["content"].strip())
    return missing


class SFTWorker:
    def __init__(self, tokenizer_dir: str, max_length: int, template: str):
        self.tok = PartTokenizer(tokenizer_dir)
        self.segmenter = ChatSegmenter(self.tok.tokenizer, template)
        self.max_length = max_length

    def _problem(self, messages: List[dict], exchange: Exchange, tokens_so_far: int) -> Optional[Tuple[str, str]]:
        """Why this exchange cannot be trained on, as (reason, detail), or None."""
        missing = unrendered(messages, exchange)
        if missing:
            j = missing[0]
            return DROPPED_BY_TEMPLATE, (f"field 'messages[{j}]' ({messages[j]['role']}) does not appear in what "
                                         f"the chat template renders; move it or use a template that keeps it")
        if not exchange.reply:
            return NO_REPLY, f"field 'messages[{exchange.start}]' and after: no assistant reply follows"
        if not messages[exchange.end - 1]["content"].strip():
            return EMPTY_REPLY, (f"field 'messages[{exchange.end - 1}].content' is an empty assistant reply; "
                                 f"fill it in or remove the exchange")
        if tokens_so_far > self.max_length:
            return TOO_LONG, (f"the first exchange alone is longer than max_length {self.max_length}"
                              if exchange.start == 0 else f"longer than max_length {self.max_length}")
        return None

    def example(self, messages: List[dict]):
        """(ids, labels, dropped): the leading whole exchanges that can be trained on, and None or
        (reason, turns, tokens) for what was cut after them."""
        exchanges = self.segmenter.exchanges(messages)
        parts = [(text, is_reply, k) for k, ex in enumerate(exchanges)
                 for text, is_reply in ((ex.prompt, False), (ex.reply, True)) if text]
        encoded = self.tok.encode_parts([[text for text, _, _ in parts]])[0] if parts else []
        ids, labels, ends = [], [], [0] * len(exchanges)
        for (_, is_reply, k), seg_ids in zip(parts, encoded):
            ids += seg_ids
            labels += seg_ids if is_reply else [IGNORE_INDEX] * len(seg_ids)
            ends[k] = len(ids)
        for k in range(1, len(ends)):
            ends[k] = max(ends[k], ends[k - 1])
        kept = 0  # exchanges kept
        problem = None
        for k, exchange in enumerate(exchanges):
            problem = self._problem(messages, exchange, ends[k])
            if problem:
                break
            kept = k + 1
        if kept == 0:
            raise RecordProblem(*problem)
        keep = ends[kept - 1]
        if problem is None:
            return ids, labels, None
        cut = exchanges[kept - 1].end
        lost = [j for ex in exchanges[kept:] for j in unrendered(messages, ex)]
        lost_tokens = sum(map(len, self.tok.encode([messages[j]["content"] for j in lost], first=True)))
        return ids[:keep], labels[:keep], (problem[0], len(messages) - cut, len(ids) - keep + lost_tokens)

    def __call__(self, batch):
        results = []
        for file_index, line_no, raw in batch:
            try:
                messages, category = parse_conversation(raw)
                ids, labels, dropped = self.example(messages)
            except RecordProblem as p:
                results.append(("skip", file_index, line_no, p.reason, p.detail))
                continue
            results.append(("doc", file_index, line_no, category, ids, labels, len(ids) - labels.count(IGNORE_INDEX),
                            dropped))
        return results


def build_parser() -> argparse.ArgumentParser:
    parser = prepare.build_parser("Tokenize chat jsonl into category-binned Arrow datasets for SFT "
                                  "(loss on assistant turns).")
    parser.add_argument("--llama_version", type=int, choices=(2, 3), default=2,
                        help="Built-in chat template when the tokenizer has none.")
    parser.add_argument("--pack", action="store_true",
                        help="Pack several whole conversations per row of exactly --max_length tokens: a conversation "
                             "never spans two rows (one that does not fit a row's room goes to another row; best fit "
                             f"decreasing per {WINDOW} conversations, as TRL's bfd), positions restart at each, and the "
                             "rest of a row is padding without loss. Without it: one conversation per row, unpadded.")
    return parser


def main(argv: Optional[List[str]] = None) -> dict:
    args = vars(build_parser().parse_args(argv))
    llama_version = args.pop("llama_version")
    cfg = PrepareConfig(**args, whole_documents=True)
    result = {}

    def body():
        template = []  # filled by describe(), read by the workers the pipeline starts after it

        def describe():
            template.append(chat_template(load_tokenizer(cfg.tokenizer_dir), llama_version))
            return pad_id(cfg.tokenizer_dir), {"chat_template": template[0]}

        def factory(tokenizer_dir):
            return SFTWorker(tokenizer_dir, max_length=cfg.max_length, template=template[0])

        result.update(run_prepare(cfg, "sft", factory, describe))

    main_with_errors(body)
    return result
