"""The engine's logprob entries in OpenAI's two shapes: chat's `logprobs.content` and completions' four lists.

A token is named by its vocabulary piece (e.g. "▁the"), not its text alone: pieces are unique, so
completions' top_logprobs (an object keyed by token) never merges two tokens that decode alike.
Completions' top_logprobs always hold the chosen token (as vLLM's do), so logprobs=0 gives it alone.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from .sampling import Logprob


class Pieces:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, token: int) -> str:
        piece = self.tokenizer.convert_ids_to_tokens(int(token))
        return piece if isinstance(piece, str) else str(token)

    def chat(self, entries: Sequence[Logprob]) -> dict:
        def one(token: int, logprob: float) -> dict:
            piece = self(token)
            return {"token": piece, "logprob": logprob, "bytes": list(piece.encode("utf-8"))}

        return {"content": [{**one(token, lp), "top_logprobs": [one(t, v) for t, v in top]}
                            for token, lp, top in entries]}

    def completion(self, entries: Sequence[Optional[Logprob]], offsets: Sequence[int],
                   prompt_ids: Sequence[int] = ()) -> dict:
        """`entries` of the prompt (with `prompt_ids`, the first None) and then of the reply, aligned with offsets."""
        out: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": list(offsets)}
        for i, entry in enumerate(entries):
            if entry is None:  # the prompt's first token: nothing before it to predict it from
                out["tokens"].append(self(prompt_ids[i]))
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
                continue
            token, lp, top = entry
            out["tokens"].append(self(token))
            out["token_logprobs"].append(lp)
            out["top_logprobs"].append({**{self(t): v for t, v in top}, self(token): lp})
        return out

    def prompt_offsets(self, prompt_ids: Sequence[int]) -> List[int]:
        """Each prompt token's first character in the prompt's decoded text."""
        return [len(self.tokenizer.decode(prompt_ids[:i], skip_special_tokens=True)) for i in range(len(prompt_ids))]
