"""Load an HF model folder and its tokenizer for evaluation (eval.choice, eval.perplexity, the demo's scorer).

One loader, so every evaluation refuses the same broken folders in the same words: one that does not load,
and one whose embedding has fewer rows than its tokenizer has tokens (a tokenizer extended without
`init_embeddings`), which otherwise ends in a raw IndexError at the first token past the embedding.
"""

from __future__ import annotations

from ..errors import InputError


def check_vocabulary(model, tokenizer, model_dir: str, flag: str = "--model") -> None:
    """Every token id the tokenizer can give must have an embedding row. More rows than tokens is fine: a 3d
    checkpoint keeps its vocabulary padded to a multiple of 64*tp (model.build.mask_padded_logits)."""
    rows, tokens = model.get_input_embeddings().weight.shape[0], len(tokenizer)
    if rows < tokens:
        raise InputError(f"{flag} {model_dir}: its embedding has {rows:,} rows but its tokenizer {tokens:,} tokens; "
                         f"resize the model to its tokenizer (python -m colossal_hammer.model.init_embeddings) or "
                         f"put the tokenizer it was trained with beside it")


def load_model(model_dir: str, device: str, **kwargs):
    """(model in eval mode on `device`, tokenizer); `kwargs` go to from_pretrained (dtype is the folder's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype="auto", **kwargs)
    except (OSError, ValueError) as e:
        raise InputError(f"--model {model_dir}: does not load: {str(e).strip().splitlines()[0][:200]}") from None
    check_vocabulary(model, tokenizer, model_dir)
    return model.to(device).eval(), tokenizer
