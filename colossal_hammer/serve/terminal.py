"""Multi-turn chat in the terminal (`inference_example.py --chat`): the server's engine and chat template.

Tokens print as they stream. /reset starts a new conversation, /exit (or Ctrl-D) quits, and Ctrl-C
stops the reply being generated (what it said so far stays in the history) without ending the
session. The model runs in the engine's thread, so the main thread is always free to take Ctrl-C.
"""

from __future__ import annotations

import queue
import sys
from dataclasses import dataclass
from typing import List, Optional, TextIO

from ..errors import InputError
from . import loading
from .engine import Engine, SamplingParams
from .prompts import chat_prompt_ids, template_name

PROMPT = ">>> "
HELP = "/reset starts a new conversation, /exit (or Ctrl-D) quits, Ctrl-C stops a reply"


@dataclass
class ChatConfig:
    model_path: str
    device: str = "cpu"
    template: Optional[str] = None  # None: the tokenizer's chat template, else the built-in Llama-2 one
    max_new_tokens: int = 512
    temperature: float = 0.3  # 0: greedy
    top_p: float = 0.95
    top_k: int = 50
    seed: Optional[int] = None


class TerminalChat:
    def __init__(self, config: ChatConfig, out: TextIO = sys.stdout):
        self.config, self.out = config, out
        model, self.tokenizer = loading.load(config.model_path, device=config.device, flag="--model_path")
        self.context = loading.context_length(model)
        self.engine = Engine(model, self.tokenizer, loading.eos_ids(model, self.tokenizer), max_batch_size=1).start()
        self.history: List[dict] = []
        self.turn = 0
        print(f"chat: {template_name(self.tokenizer, config.template)}; {HELP}", file=sys.stderr, flush=True)

    def prompt_ids(self) -> List[int]:
        """The history's ids; the oldest exchanges go when it no longer fits the context with a reply."""
        while True:
            ids = chat_prompt_ids(self.tokenizer, self.history, self.config.template)
            if len(ids) + self.config.max_new_tokens <= self.context or len(self.history) == 1:
                return ids
            self.history = self.history[2:]
            print("(the oldest exchange was dropped: the conversation outgrew the context)", file=sys.stderr)

    def reply(self, text: str) -> str:
        self.history.append({"role": "user", "content": text})
        ids = self.prompt_ids()
        room = self.context - len(ids)
        if room < 1:
            self.history.pop()
            print(f"(the message is {len(ids)} tokens; the context is {self.context}: say it shorter)", file=self.out,
                  flush=True)
            return ""
        c = self.config
        # each turn its own seed (seed + turn): reproducible sessions without repeating the same draws
        params = SamplingParams(max_tokens=min(c.max_new_tokens, room), temperature=c.temperature, top_p=c.top_p,
                                top_k=c.top_k, seed=None if c.seed is None else c.seed + self.turn)
        self.turn += 1
        chunks: "queue.Queue" = queue.Queue()
        request = self.engine.submit(ids, params, chunks.put)
        parts = []
        try:
            while True:
                try:
                    chunk = chunks.get(timeout=0.1)  # a short wait keeps Ctrl-C prompt on every platform
                except queue.Empty:
                    continue
                parts.append(chunk.text)
                self.out.write(chunk.text)
                self.out.flush()
                if chunk.error:
                    print(f"\n({chunk.error})", file=self.out)
                if chunk.finish_reason:
                    break
        except KeyboardInterrupt:
            request.cancel()
            self.out.write(" [stopped]")
        self.out.write("\n")
        self.out.flush()
        said = "".join(parts)
        if said.strip():
            self.history.append({"role": "assistant", "content": said})
        else:
            self.history.pop()  # nothing to keep: the user's turn goes too, so roles still alternate
        return said

    def run(self, stdin: TextIO = sys.stdin) -> None:
        interactive = stdin.isatty()
        while True:
            try:
                line = input(PROMPT) if interactive and stdin is sys.stdin else self._read(stdin)
            except EOFError:
                break
            except KeyboardInterrupt:  # at the prompt: a fresh line, as shells do
                self.out.write("\n")
                continue
            command = line.strip()
            if command == "/exit":
                break
            if command == "/reset":
                self.history = []
                print("(new conversation)", file=self.out, flush=True)
            elif command:
                self.reply(command)
        self.engine.stop()

    def _read(self, stdin: TextIO) -> str:
        self.out.write(PROMPT)
        self.out.flush()
        line = stdin.readline()
        if not line:
            raise EOFError
        return line


def chat(config: ChatConfig) -> None:
    if config.template == "no":
        raise InputError("--chat_template no: a multi-turn chat needs a template; use auto, llama2 or llama3")
    TerminalChat(config).run()
