"""One model thread decoding every active request together.

Requests wait in a queue. The newcomers found there are prefilled together (prompts padded on the
left, masked, with positions per row); a request with n choices is prefilled once and its KV-cache
rows are copied n times. The rows then join the running batch: caches and attention masks are
padded on the left to a common length, position ids are kept per row, and one forward pass decodes
one token for every row. Each row samples with its own parameters (sampling.py) and stops on its
own EOS, stop strings, stop token ids or max_tokens; a finished or cancelled row (a client that
went away) leaves the batch at the next step, and columns that only padding still occupies are trimmed.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch

from .grammar import Grammars
from .prompts import StopDecoder
from .sampling import Logprob, SamplingParams, adjust, logprob_of, prompt_logprobs, sample  # noqa: F401 (re-exported)


@dataclass
class Chunk:
    """What a request hears from the engine: new text, and at the end why it finished."""
    text: str
    finish_reason: Optional[str] = None  # "stop" | "length" | "error"
    completion_tokens: int = 0
    error: Optional[str] = None
    index: int = 0  # which of the request's n choices
    logprobs: List[Logprob] = field(default_factory=list)  # of the tokens generated since the last chunk
    offsets: List[int] = field(default_factory=list)  # each of those tokens' first character in the reply
    prompt_logprobs: Optional[List[Optional[Logprob]]] = None  # echo: on the first chunk only

    def then(self, later: "Chunk") -> "Chunk":
        """This chunk and the next of the same choice as one."""
        return Chunk(self.text + later.text, later.finish_reason, later.completion_tokens, later.error, self.index,
                     self.logprobs + later.logprobs, self.offsets + later.offsets,
                     self.prompt_logprobs if self.prompt_logprobs is not None else later.prompt_logprobs)


class Request:
    def __init__(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Callable[[Chunk], None],
                 tokenizer, index: int = 0, eos_ids: frozenset = frozenset(), constraint=None):
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.sink = sink
        self.index = index
        self.constraint = constraint  # grammar.Constraint of a response_format, else None
        self.ends = frozenset(eos_ids) | frozenset(params.stop_token_ids)
        self.decoder = StopDecoder(tokenizer, params.stop)
        self.generated: List[int] = []
        self.done = False
        self.pending: List[Logprob] = []  # logprobs of tokens whose text is still held back
        self.pending_offsets: List[int] = []
        self.prompt_lp: Optional[List[Optional[Logprob]]] = None
        self._cancelled = threading.Event()
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed + index)  # n choices from one seed differ
        else:
            self.generator.seed()

    def cancel(self) -> None:
        """Thread-safe: the engine drops the request before its next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def next_token(self, logits: torch.Tensor) -> tuple:
        """(token, its logprob entry or None) from this row's logits."""
        logits = adjust(logits, self.params, self.prompt_ids, self.generated, self.ends)
        if self.constraint is not None:
            logits = self.constraint.mask(logits)
        token = sample(logits, self.params, self.generator)
        if self.constraint is not None and token not in self.ends:
            self.constraint.consume(token)
        entry = None if self.params.logprobs is None else logprob_of(logits, token, self.params.logprobs)
        return token, entry


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    """(batch, heads, seq, dim) → seq padded with zeros on the left (masked, never attended)."""
    missing = length - t.shape[2]
    if missing == 0:
        return t
    return torch.cat([t.new_zeros(t.shape[0], t.shape[1], missing, t.shape[3]), t], dim=2)


class _Batch:
    """The running rows: their requests, KV cache, attention mask, next position and last token."""

    def __init__(self, rows: List[Request], keys, values, mask: torch.Tensor, positions: torch.Tensor,
                 last: torch.Tensor):
        self.rows, self.keys, self.values = rows, keys, values
        self.mask, self.positions, self.last = mask, positions, last

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
        self.grammars = Grammars(tokenizer, model.config.vocab_size)

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
        return self.submit_choices(prompt_ids, params, sink, 1)[0]

    def submit_choices(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Callable[[Chunk], None],
                       n: int, first_index: int = 0) -> List[Request]:
        """n choices of one prompt (one prefill); each chunk says its choice's index, from first_index on."""
        group = [Request(prompt_ids, params, sink, self.tokenizer, first_index + i, self.eos_ids,
                         self.grammars.matcher(params.grammar) if params.grammar else None) for i in range(n)]
        self.inbox.put(group)
        return group

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
        """Prefill the waiting requests together and add them to the batch (blocking while there is nothing to
        do); False on stop. A group of n choices comes in whole, so the batch may pass its size by n - 1."""
        room = self.max_batch_size - (len(self.batch.rows) if self.batch else 0)
        groups: List[List[Request]] = []
        while room > 0:
            try:
                group = self.inbox.get(block=self.batch is None and not groups)
            except queue.Empty:
                break
            if group is None:
                return False
            group = [r for r in group if not r.cancelled]
            if group:
                groups.append(group)
                room -= len(group)
        if groups:
            self._guarded(lambda: self._prefill(groups), [r for g in groups for r in g])
        return True

    def _guarded(self, step, requests: List[Request]) -> None:
        """A failing forward pass ends the requests it served with an error; the engine keeps serving."""
        try:
            step()
        except Exception as e:  # noqa: BLE001 - reported to each client as a server error
            for r in requests:
                if not r.done:
                    r.done = True
                    r.sink(Chunk("", "error", len(r.generated), f"generation failed: {type(e).__name__}: {e}",
                                 r.index))
            if step == self._decode_step:
                self.batch = None

    def _forward(self, input_ids, all_logits: bool = False, **kwargs):
        from transformers import DynamicCache

        cache = kwargs.pop("cache", None)
        past = DynamicCache.from_legacy_cache(cache) if cache is not None else DynamicCache()
        out = self.model(input_ids=input_ids.to(self.device), past_key_values=past, use_cache=True,
                         logits_to_keep=0 if all_logits else 1, **kwargs)
        return out.logits.float().cpu(), out.past_key_values

    def _prefill(self, groups: List[List[Request]]) -> None:
        prompts = [g[0].prompt_ids for g in groups]
        length = max(len(p) for p in prompts)
        mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
        ids = torch.tensor([[0] * (length - len(p)) + p for p in prompts])  # the padding is masked: any id does
        extra = {}
        if len(groups) > 1:
            extra = dict(attention_mask=mask.to(self.device),
                         position_ids=(mask.cumsum(1) - 1).clamp(min=0).to(self.device))
        echo = any(g[0].params.prompt_logprobs is not None for g in groups)
        logits, past = self._forward(ids, all_logits=echo, **extra)
        rows, keys, values, masks, firsts = [], [[] for _ in past.key_cache], [[] for _ in past.value_cache], [], []
        for b, (group, prompt) in enumerate(zip(groups, prompts)):
            alternatives = group[0].params.prompt_logprobs
            echoed = None if alternatives is None else prompt_logprobs(logits[b, length - len(prompt):], prompt,
                                                                       alternatives)
            for request in group:
                request.prompt_lp = echoed
                if request.params.max_tokens == 0:  # echo alone: the prompt's logprobs, nothing generated
                    request.done = True
                    request.sink(Chunk("", "length", 0, index=request.index, prompt_logprobs=echoed))
                    continue
                token, entry = request.next_token(logits[b, -1])
                if self._emit(request, token, entry):
                    continue
                rows.append(request)
                firsts.append(token)
                masks.append(mask[b])
                for layer, (k, v) in enumerate(zip(past.key_cache, past.value_cache)):
                    keys[layer].append(k[b:b + 1])
                    values[layer].append(v[b:b + 1])
        if not rows:
            return
        positions = torch.stack(masks).sum(1)
        joined = _Batch(rows, [torch.cat(k) for k in keys], [torch.cat(v) for v in values], torch.stack(masks),
                        positions, torch.tensor(firsts))
        if self.batch is None:
            self.batch = joined
        else:
            self.batch.add(joined)

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
            token, entry = request.next_token(logits[i, -1])
            batch.last[i] = token
            if not self._emit(request, token, entry):
                keep.append(i)
        if not keep:
            self.batch = None
        elif len(keep) < len(batch.rows):
            batch.keep(keep)

    def _emit(self, request: Request, token: int, entry: Optional[Logprob] = None) -> bool:
        """Hand the token's text (and logprobs) to the request; True when the request is finished."""
        if request.cancelled:
            request.done = True
            return True
        if entry is not None:
            request.pending.append(entry)
            request.pending_offsets.append(len(request.decoder.text))
        request.generated.append(token)
        n = len(request.generated)
        if token in request.ends:
            text, reason = request.decoder.flush(), "stop"
        else:
            text, stopped = request.decoder.push(token)
            complete = request.constraint is not None and request.constraint.finished  # only EOS could follow
            reason = "stop" if stopped or complete else ("length" if n >= request.params.max_tokens else None)
            if reason and not stopped:  # held-back text is the reply's; after a stop string it is not
                text += request.decoder.flush()
        if reason or text:
            request.sink(Chunk(text, reason, n, index=request.index, logprobs=request.pending,
                               offsets=request.pending_offsets, prompt_logprobs=request.prompt_lp))
            request.pending, request.pending_offsets, request.prompt_lp = [], [], None
        request.done = reason is not None
        return request.done
