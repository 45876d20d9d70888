"""One row's next token: its sampling parameters, the logit adjustments it asked for, and logprobs.

Adjustments follow vLLM's definitions: repetition_penalty over prompt and reply tokens (positive
logits divided by it, negative multiplied), frequency and presence penalties over the reply so far,
logit_bias added, and EOS / stop_token_ids masked until min_tokens. Logprobs are of the adjusted
logits before temperature, top_k and top_p: the distribution the choice was made from at temperature 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: every token
    stop: Sequence[str] = ()
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: Dict[int, float] = field(default_factory=dict)
    stop_token_ids: Sequence[int] = ()
    min_tokens: int = 0
    logprobs: Optional[int] = None  # alternatives to report per generated token; None: no logprobs
    prompt_logprobs: Optional[int] = None  # echo: the prompt tokens' logprobs, with this many alternatives
    grammar: Optional[str] = None  # response_format: an llguidance grammar the reply must follow (grammar.py)

    @property
    def adjusts(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias or self.min_tokens)


# (token id, its logprob, the most likely alternatives as (id, logprob), best first)
Logprob = Tuple[int, float, List[Tuple[int, float]]]

GREEDY_BELOW = 1e-5  # a temperature this small would overflow the logits; it means greedy (as in vLLM)


def adjust(logits: torch.Tensor, params: SamplingParams, prompt_ids: Sequence[int], generated: Sequence[int],
           ends: Sequence[int]) -> torch.Tensor:
    """`logits` (vocab,) with the row's penalties, bias and min_tokens mask applied; `ends`: EOS and stop ids."""
    if not params.adjusts:
        return logits
    logits = logits.clone()
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(generated)), dtype=torch.long)
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    if generated and (params.frequency_penalty or params.presence_penalty):
        counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=logits.numel()).float()
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).float()
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), dtype=torch.long)
        logits[ids] += torch.tensor(list(params.logit_bias.values()), dtype=logits.dtype)
    if len(generated) < params.min_tokens and ends:
        logits[torch.tensor(sorted(ends), dtype=torch.long)] = float("-inf")
    return logits


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


def logprob_of(logits: torch.Tensor, token: int, alternatives: int) -> Logprob:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top: List[Tuple[int, float]] = []
    if alternatives:
        values, ids = torch.topk(logprobs, min(alternatives, logprobs.numel()))
        top = list(zip(ids.tolist(), values.tolist()))
    return token, float(logprobs[token]), top


def prompt_logprobs(logits: torch.Tensor, prompt_ids: Sequence[int], alternatives: int) -> List[Optional[Logprob]]:
    """Each prompt token's logprob given the ones before it (`logits`: (len(prompt), vocab)); the first has none."""
    out: List[Optional[Logprob]] = [None]
    for position, token in enumerate(prompt_ids[1:]):
        out.append(logprob_of(logits[position], token, alternatives))
    return out
