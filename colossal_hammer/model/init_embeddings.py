"""Resize a model's embeddings and lm_head to an extended tokenizer and initialise the new rows.

    python -m colossal_hammer.model.init_embeddings --source_model_and_tokenizer_path SRC \
        --target_tokenizer_path T --target_model_path OUT [--init mean_subtokens|mean_all|random]

mean_subtokens: a new token's row is the mean of the rows of the pieces the *old* tokenizer cuts its
    text into, leaving out the bare "▁" prefix piece and byte-fallback pieces <0x..> (shared by
    every word or every character of a script, they say nothing about this token); a token that
    leaves no piece gets the mean of all old rows. Input embeddings and (untied) lm_head alike.
mean_all: every new row is the mean of all old rows.
random: the model's own initialiser (normal, std = initializer_range).

The computation is one sparse matrix product on the chosen device; the model keeps its dtype, old
rows are untouched (so logits over old tokens do not change), and the target tokenizer is saved
beside the model.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Dict, List

from ..errors import (InputError, check_device, check_output, command_name, require_model, require_tokenizer,
                      run_json_cli, writing)

if TYPE_CHECKING:  # torch loads inside the functions: bad paths are reported before it (seconds)
    import torch

INITS = ("mean_subtokens", "mean_all", "random")
BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def check_extends(old_tok, new_tok) -> None:
    old_vocab, new_vocab = old_tok.get_vocab(), new_tok.get_vocab()
    for token, i in old_vocab.items():
        if new_vocab.get(token) != i:
            raise InputError(f"the target tokenizer does not extend the source: {token!r} is id {i} in the source "
                             f"and {new_vocab.get(token)} in the target")


def subtoken_ids(old_tok, new_tok, new_ids: List[int]) -> Dict[int, List[int]]:
    """For each new id, the old ids that make up its text, without bare "▁" and byte pieces."""
    skip = {i for t, i in old_tok.get_vocab().items() if t == "▁" or BYTE_PIECE.match(t)}
    texts = [new_tok.convert_tokens_to_string([t]) for t in new_tok.convert_ids_to_tokens(new_ids)]
    # A piece that starts a word ("▁人工") decodes with the space stripped; the old tokenizer adds
    # its own "▁" at a text start, which is then dropped with the other bare "▁".
    encoded = old_tok(texts, add_special_tokens=False)["input_ids"]
    return {new: [i for i in ids if i not in skip] for new, ids in zip(new_ids, encoded)}


def mean_rows(weight: torch.Tensor, groups: Dict[int, List[int]], fallback: torch.Tensor) -> torch.Tensor:
    """Rows = mean of weight[group] per group, as one sparse x dense product; empty groups get `fallback`."""
    import torch

    order = list(groups)
    rows, cols, vals = [], [], []
    for r, new in enumerate(order):
        ids = groups[new]
        for i in ids:
            rows.append(r)
            cols.append(i)
            vals.append(1.0 / len(ids))
    matrix = torch.sparse_coo_tensor(torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1),
                                     torch.tensor(vals, dtype=torch.float32), (len(order), weight.shape[0]),
                                     device=weight.device, check_invariants=True)
    out = torch.sparse.mm(matrix, weight.float())
    empty = torch.tensor([not groups[new] for new in order], device=weight.device)
    out[empty] = fallback.float()
    return out


def _load(cls, path: str, flag: str, **kwargs):
    """from_pretrained on a folder already checked to exist; what still fails is a damaged folder."""
    try:
        return cls.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise InputError(f"{flag} {path}: does not load: {str(e).strip().splitlines()[0][:200]}") from None


def init_embeddings(source: str, target_tokenizer: str, target_model: str, init: str = "mean_subtokens",
                    device: str = "cpu") -> dict:
    if init not in INITS:
        raise InputError(f"--init {init}: must be one of {', '.join(INITS)}")
    require_model(source, "--source_model_and_tokenizer_path")
    require_tokenizer(target_tokenizer, "--target_tokenizer_path")
    check_output(target_model, "--target_model_path", [source, target_tokenizer])
    check_device(device)
    import torch  # after the checks: torch and transformers take seconds to load
    from transformers import AutoModelForCausalLM, AutoTokenizer

    old_tok = _load(AutoTokenizer, source, "--source_model_and_tokenizer_path")
    new_tok = _load(AutoTokenizer, target_tokenizer, "--target_tokenizer_path")
    model = _load(AutoModelForCausalLM, source, "--source_model_and_tokenizer_path", torch_dtype="auto")
    check_extends(old_tok, new_tok)
    dtype = model.get_input_embeddings().weight.dtype
    model.to(device)
    old_size = model.get_input_embeddings().weight.shape[0]
    new_size = len(new_tok)
    if new_size < old_size:
        raise InputError(f"the target tokenizer ({new_size}) is smaller than the model's vocabulary ({old_size})")
    new_ids = list(range(old_size, new_size))
    model.resize_token_embeddings(new_size, mean_resizing=False)
    groups = subtoken_ids(old_tok, new_tok, new_ids) if init == "mean_subtokens" and new_ids else \
        {i: [] for i in new_ids}
    tied = model.config.tie_word_embeddings
    matrices = [model.get_input_embeddings().weight] + ([] if tied else [model.get_output_embeddings().weight])
    if init != "random" and new_ids:  # a target with no new token leaves the model as it was
        with torch.no_grad():
            for weight in matrices:
                old = weight[:old_size]
                weight[old_size:] = mean_rows(old, groups, old.float().mean(0)).to(weight.dtype)
    model.to("cpu")
    with writing(target_model, "--target_model_path"):
        model.save_pretrained(target_model, safe_serialization=True)
        new_tok.save_pretrained(target_model)
    fallbacks = sum(1 for g in groups.values() if not g) if init == "mean_subtokens" else len(new_ids)
    return {"old_vocab": old_size, "new_vocab": new_size, "init": init, "dtype": str(dtype).replace("torch.", ""),
            "tied": bool(tied), "rows_from_mean_of_all": fallbacks if init != "random" else 0}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog=command_name(__spec__), description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source_model_and_tokenizer_path", required=True)
    p.add_argument("--target_tokenizer_path", required=True)
    p.add_argument("--target_model_path", required=True)
    p.add_argument("--init", choices=INITS, default="mean_subtokens")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    return run_json_cli(lambda: init_embeddings(args.source_model_and_tokenizer_path, args.target_tokenizer_path,
                                                args.target_model_path, args.init, args.device))


if __name__ == "__main__":
    main()
