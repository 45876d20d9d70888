"""One model thread decoding every active request together.

Requests wait in a queue. Each newcomer is prefilled alone (so its first token is what it would be
alone), then its KV-cache rows join the running batch: caches and attention masks are padded on the
left to a common length, position ids are kept per row, and one forward pass decodes one token for
every row. Each row samples with its own temperature / top_p / seed and stops on its own EOS, stop
strings or max_tokens; a finished or cancelled row (a client that went away) leaves the batch at the
next step, and columns that only padding still occupies are trimmed.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

from .prompts import StopDecoder


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: every token
    stop: Sequence[str] = ()
    seed: Optional[int] = None


@dataclass
class Chunk:
    """What a request hears from the engine: new text, and at the end why it finished."""
    text: str
    finish_reason: Optional[str] = None  # "stop" | "length" | "error"
    completion_tokens: int = 0
    error: Optional[str] = None


class Request:
    def __init__(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Callable[[Chunk], None],
                 tokenizer):
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.sink = sink
        self.decoder = StopDecoder(tokenizer, params.stop)
        self.generated: List[int] = []
        self.done = False
        self._cancelled = threading.Event()
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    def cancel(self) -> None:
        """Thread-safe: the engine drops the request before its next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


GREEDY_BELOW = 1e-5  # a temperature this small would overflow the logits; it means greedy (as in vLLM)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    if params.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits))
    logits = logits.float() / params.temperature
    if params.top_k and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest set whose mass reaches top_p
        drop = torch.cumsum(sorted_probs, 0) - sorted_probs >= params.top_p
        drop[0] = False  # the top token always stays: a top_p like 1e-300 is 0 in float32 and would drop it too
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    """(batch, heads, seq, dim) → seq padded with zeros on the left (masked, never attended)."""
    missing = length - t.shape[2]
    if missing == 0:
        return t
    return torch.cat([t.new_zeros(t.shape[0], t.shape[1], missing, t.shape[3]), t], dim=2)


class _Batch:
    """The running rows: their requests, KV cache, attention mask, next position and last token."""

    def __init__(self, request: Request, cache, last: int):
        self.rows = [request]
        self.keys = [k for k, _ in cache]
        self.values = [v for _, v in cache]
        n = len(request.prompt_ids)
        self.mask = torch.ones(1, n, dtype=torch.long)
        self.positions = torch.tensor([n])
        self.last = torch.tensor([last])

    def add(self, other: "_Batch") -> None:
        length = max(self.mask.shape[1], other.mask.shape[1])
        self.keys = [torch.cat([_pad_left(a, length), _pad_left(b, length)]) for a, b in zip(self.keys, other.keys)]
        self.values = [torch.cat([_pad_left(a, length), _pad_left(b, length)])
                       for a, b in zip(self.values, other.values)]
        pad = lambda m: torch.cat([m.new_zeros(m.shape[0], length - m.shape[1]), m], dim=1)  # noqa: E731
        self.mask = torch.cat([pad(self.mask), pad(other.mask)])
        self.positions = torch.cat([self.positions, other.positions])
        self.last = torch.cat([self.last, other.last])
        self.rows += other.rows

    def keep(self, keep: List[int]) -> None:
        index = torch.tensor(keep, dtype=torch.long)
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask.index_select(0, index)
        first = int((self.mask.sum(0) > 0).nonzero()[0]) if keep else 0  # columns only padding still holds
        self.mask = self.mask[:, first:]
        self.keys = [k.index_select(0, index)[:, :, first:] for k in self.keys]
        self.values = [v.index_select(0, index)[:, :, first:] for v in self.values]
        self.positions = self.positions.index_select(0, index)
        self.last = self.last.index_select(0, index)


class Engine:
    def __init__(self, model, tokenizer, eos_ids: frozenset, max_batch_size: int = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_batch_size = max_batch_size
        self.device = next(model.parameters()).device
        self.inbox: "queue.Queue[Optional[Request]]" = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="serve-engine", daemon=True)
        self.batch: Optional[_Batch] = None
        self.failure: Optional[str] = None  # set when the thread itself died

    def start(self) -> "Engine":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.inbox.put(None)
        self.thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Callable[[Chunk], None]) -> Request:
        request = Request(prompt_ids, params, sink, self.tokenizer)
        self.inbox.put(request)
        return request

    # ---- the model thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._admit():
                    if self.batch is not None:
                        self._guarded(self._decode_step, self.batch.rows)
        except BaseException as e:  # noqa: BLE001 - recorded for /health, then the thread ends
            self.failure = f"{type(e).__name__}: {e}"
            raise

    def _admit(self) -> bool:
        """Move waiting requests into the batch (blocking while there is nothing to do); False on stop."""
        room = self.max_batch_size - (len(self.batch.rows) if self.batch else 0)
        while room > 0:
            try:
                request = self.inbox.get(block=self.batch is None)
            except queue.Empty:
                break
            if request is None:
                return False
            if request.cancelled:
                continue
            self._guarded(self._prefill, [request])
            room -= 1
        return True

    def _guarded(self, step, requests: List[Request]) -> None:
        """A failing forward pass ends the requests it served with an error; the engine keeps serving."""
        try:
            step(requests[0]) if step == self._prefill else step()
        except Exception as e:  # noqa: BLE001 - reported to each client as a server error
            for r in requests:
                if not r.done:
                    r.done = True
                    r.sink(Chunk("", "error", len(r.generated), f"generation failed: {type(e).__name__}: {e}"))
            if step != self._prefill:
                self.batch = None

    def _forward(self, input_ids, **kwargs):
        from transformers import DynamicCache

        cache = kwargs.pop("cache", None)
        past = DynamicCache.from_legacy_cache(cache) if cache is not None else DynamicCache()
        out = self.model(input_ids=input_ids.to(self.device), past_key_values=past, use_cache=True,
                         logits_to_keep=1, **kwargs)
        return out.logits[:, -1].float().cpu(), out.past_key_values

    def _prefill(self, request: Request) -> None:
        logits, past = self._forward(torch.tensor([request.prompt_ids]))
        token = sample(logits[0], request.params, request.generator)
        row = _Batch(request, [(past.key_cache[i], past.value_cache[i]) for i in range(len(past.key_cache))], token)
        if self._emit(request, token):
            return
        if self.batch is None:
            self.batch = row
        else:
            self.batch.add(row)

    def _decode_step(self) -> None:
        batch = self.batch
        live = [i for i, r in enumerate(batch.rows) if not r.cancelled]
        if len(live) < len(batch.rows):
            if not live:
                self.batch = None
                return
            batch.keep(live)
        mask = torch.cat([batch.mask, torch.ones(len(batch.rows), 1, dtype=torch.long)], dim=1)
        logits, past = self._forward(batch.last.view(-1, 1), cache=list(zip(batch.keys, batch.values)),
                                     attention_mask=mask.to(self.device),
                                     position_ids=batch.positions.view(-1, 1).to(self.device))
        batch.keys, batch.values, batch.mask = list(past.key_cache), list(past.value_cache), mask
        batch.positions += 1
        keep = []
        for i, request in enumerate(batch.rows):
            token = sample(logits[i], request.params, request.generator)
            batch.last[i] = token
            if not self._emit(request, token):
                keep.append(i)
        if not keep:
            self.batch = None
        elif len(keep) < len(batch.rows):
            batch.keep(keep)

    def _emit(self, request: Request, token: int) -> bool:
        """Hand the token's text to the request; True when the request is finished."""
        if request.cancelled:
            request.done = True
            return True
        request.generated.append(token)
        n = len(request.generated)
        if token in self.eos_ids:
            text, reason = request.decoder.flush(), "stop"
        else:
            text, stopped = request.decoder.push(token)
            reason = "stop" if stopped else ("length" if n >= request.params.max_tokens else None)
            if reason == "length":
                text += request.decoder.flush()
        if reason or text:
            request.sink(Chunk(text, reason, n))
        request.done = reason is not None
        return request.done
