"""response_format json_object / json_schema: each constrained row's tokens masked by llguidance's matcher.

llguidance (the grammar library vLLM and llama.cpp use) compiles the JSON schema to a grammar and,
before each token, says which tokens keep the text valid; EOS is allowed only once the JSON is
complete, and the matcher stops the row as soon as nothing but EOS could follow. The JSON is compact
(no whitespace between its tokens).
"""

from __future__ import annotations

import threading
from typing import Optional

import torch

JSON_OBJECT = {"type": "object"}


def compile_schema(schema: dict) -> str:
    """The grammar for `schema`; ValueError with llguidance's reason when it cannot be compiled."""
    from llguidance import LLMatcher

    # compact JSON, no whitespace between tokens: with whitespace allowed, a weak model can pad the complete
    # object with newlines until max_tokens (seen with a random test model) instead of ending
    grammar = LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    problem = LLMatcher.validate_grammar(grammar)
    if problem:
        raise ValueError(problem)
    return grammar


class Grammars:
    """The model's tokenizer as llguidance sees it (built once, on the first constrained request)."""

    def __init__(self, tokenizer, vocab_size: int):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._llg = None
        self._lock = threading.Lock()

    def matcher(self, grammar: str) -> "Constraint":
        from llguidance import LLMatcher
        from llguidance.hf import from_tokenizer

        with self._lock:
            if self._llg is None:
                self._llg = from_tokenizer(self.tokenizer, n_vocab=self.vocab_size)
        return Constraint(LLMatcher(self._llg, grammar))


class Constraint:
    """One row's matcher: mask the logits, then consume the chosen token."""

    def __init__(self, matcher):
        self.matcher = matcher

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        allowed = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8)
        allowed = allowed[:logits.numel()] > 0
        return logits.masked_fill(~allowed, float("-inf"))

    def consume(self, token: int) -> None:
        self.matcher.consume_token(token)

    @property
    def finished(self) -> bool:
        """Nothing but EOS can follow (the JSON is complete), or the matcher failed."""
        return self.matcher.is_stopped()

    @property
    def error(self) -> Optional[str]:
        return (self.matcher.get_error() or "grammar error") if self.matcher.is_error() else None
