"""Messages → prompt ids through the chat template SFT used, and generated ids → text with stop strings.

The template is the tokenizer's own (an SFT checkpoint carries its data's template in
tokenizer_config.json); a tokenizer without one gets the built-in Llama-2 template that
prepare_sft_dataset.py renders conversations with, so a model trained on our SFT data is prompted as
it was trained.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from ..data.sft import BUILTIN_TEMPLATES


def chat_template(tokenizer, forced: Optional[str] = None) -> str:
    """`forced` (llama2 | llama3) picks a built-in template over the tokenizer's."""
    if forced:
        return BUILTIN_TEMPLATES[{"llama2": 2, "llama3": 3}[forced]]
    if tokenizer.chat_template:
        return tokenizer.get_chat_template()
    return BUILTIN_TEMPLATES[2]


def template_name(tokenizer, forced: Optional[str] = None) -> str:
    if forced:
        return f"the built-in {forced} template"
    return "the tokenizer's chat_template" if tokenizer.chat_template else "the built-in Llama-2 template"


def chat_prompt_ids(tokenizer, messages: Sequence[dict], forced: Optional[str] = None) -> List[int]:
    """Token ids of the conversation plus the assistant's generation prompt (the template carries BOS)."""
    text = tokenizer.apply_chat_template(list(messages), chat_template=chat_template(tokenizer, forced), tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def completion_prompt_ids(tokenizer, prompt: str) -> List[int]:
    """A raw prompt, with BOS as the tokenizer adds it (as inference_example.py does without a template)."""
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


class StopDecoder:
    """Generated ids → new text, one token at a time, never showing a stop string.

    The whole reply is decoded each time (a SentencePiece piece's leading space and a multi-byte
    character split over byte tokens only come out right in context). Text that might be the start
    of a stop string, or ends in an incomplete character, is held back until the next token decides.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: List[int] = []
        self.sent = 0  # characters of the decoded text already handed out
        self.text = ""

    def push(self, token_id: int) -> Tuple[str, bool]:
        """(text to hand out now, whether a stop string was reached)."""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if hits:
            return self._take(min(hits)), True
        end = len(self.text)
        if self.text.endswith("\ufffd"):  # a character whose bytes are still coming
            end = len(self.text.rstrip("\ufffd"))
        for s in self.stop:
            for k in range(min(len(s) - 1, end - self.sent), 0, -1):
                if self.text[end - k:end] == s[:k]:
                    end -= k
                    break
        return self._take(max(end, self.sent)), False

    def flush(self) -> str:
        """What was held back, at the end of a reply that stopped for another reason."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out
