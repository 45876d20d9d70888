"""Loss, perplexity and bits per byte of a causal LM on text files, per file and per category.

    python -m colossal_hammer.eval.perplexity --model DIR --data held_out_zh.jsonl,held_out_en.txt \
        [--max_length 2048] [--output report.json]
    python -m colossal_hammer.eval.perplexity --model DIR --data PREPARED_DIR [--max_tokens T]

Each document is scored as BOS + its tokens, predicting every token of the text (not BOS, not EOS),
in windows of --max_length tokens. Loss and perplexity are per token and so depend on the tokenizer;
bits per byte (summed negative log-likelihood in bits / UTF-8 bytes of the text) does not, and is
the number to compare across tokenizers. Rows of a .jsonl file take 'text' or 'target', and
'category' when present; a .txt file is one document per line.

A --data entry that is a prepared dataset folder (prepare_*_dataset.py output) is scored row by row as
training sees it (documents of a packed row attend only within themselves; every label token counts,
EOS included) and its bytes are those its predicted tokens stand for (eval/token_bytes.py): the same
figures, from the same code (eval/scoring.py), as train.py --eval_dataset.
"""

from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional, Tuple

from ..data import reader
from . import scoring
from .loading import load_model
from .token_bytes import byte_lengths
from ..model.build import mask_padded_logits
from ..errors import (command_name, InputError, check_device, check_output_file, check_positive, require_file, require_model,
                      run_cli, write_json)


def read_documents(path: str) -> List[Tuple[str, str]]:
    """(category, text) pairs (data.reader's one reader; a .txt file's category is its file name)."""
    docs = reader.read_documents(path)
    if not docs:
        raise InputError(f"{path}: no documents")
    return docs


def document_nll(model, ids: List[int], bos: Optional[int], max_length: int, device) -> Tuple[float, int]:
    """Summed NLL (nats) of predicting `ids` after BOS, and the number of predicted tokens."""
    import torch  # here, not at the top: bad paths are reported before torch loads (seconds)

    sequence = ([bos] if bos is not None else []) + ids  # without BOS the first token has no context
    total, count = 0.0, 0
    # Windows overlap by one token: window k predicts sequence[k*L+1 : (k+1)*L+1] from what precedes
    # it in the window, so every token after the first is predicted exactly once.
    for begin in range(0, len(sequence) - 1, max_length):
        window = torch.tensor([sequence[begin: begin + max_length + 1]], device=device)
        with torch.no_grad():
            logits = model(window[:, :-1]).logits.float()
        total += float(torch.nn.functional.cross_entropy(logits[0], window[0, 1:], reduction="sum"))
        count += window.shape[1] - 1
    return total, count


def evaluate(model_dir: str, data_files: List[str], max_length: int = 2048, device: str = "cpu",
             max_tokens: int = 0) -> Dict[str, dict]:
    if os.path.isdir(os.path.join(model_dir, "modeling")):
        model_dir = os.path.join(model_dir, "modeling")  # a checkpoint's step-N folder: its HF folder
    require_model(model_dir, "--model")
    if not data_files:
        raise InputError("--data: give one or more .jsonl / .txt files or prepared dataset folders, comma-separated")
    prepared = [path for path in data_files if os.path.isdir(path)]
    for path in data_files:
        if path not in prepared:
            require_file(path, "--data", ".jsonl or .txt file, or prepared dataset folder")
    check_positive(max_length, "--max_length")
    check_positive(max_tokens, "--max_tokens", allow_zero=True)
    check_device(device)
    files = {path: read_documents(path) for path in data_files if path not in prepared}  # fail fast, before the model
    sets = {path: load_prepared(path) for path in prepared}
    from tqdm import tqdm  # after the checks: torch and transformers take seconds to load

    # SDPA as in training: the document mask of packed rows is a bool mask only SDPA takes as is
    model, tokenizer = load_model(model_dir, device, attn_implementation="sdpa")
    mask_padded_logits(model)  # a 3d run's checkpoint keeps its padded vocabulary: rows no softmax may see
    tally = scoring.Tally()
    bar = tqdm(total=sum(len(d) for d in files.values()), desc="evaluate", unit="doc", disable=None)
    for path, docs in files.items():
        for category, text in docs:
            ids = tokenizer(text, add_special_tokens=False).input_ids
            nll, count = document_nll(model, ids, tokenizer.bos_token_id, max_length, device)
            for key in (f"file:{os.path.basename(path)}", f"category:{category}"):
                tally.add(key, nll, count, len(text.encode("utf-8")))
            bar.update()
    bar.close()
    for path, dataset in sets.items():
        score_prepared(model, tokenizer, path, dataset, max_tokens, device, tally)
    return tally.report()


def load_prepared(path: str):
    from ..data.loader import BinnedDataset

    try:
        return BinnedDataset([path])
    except InputError as e:
        raise InputError(f"--data {e}; give .jsonl / .txt files or prepare_*_dataset.py output") from None


def score_prepared(model, tokenizer, path: str, dataset, max_tokens: int, device, tally: scoring.Tally) -> None:
    """Each chosen row on its own (no padding), documents masked from each other as in training."""
    import torch
    from tqdm import tqdm

    from ..data.loader import PackedCollator
    from ..model.doc_attention import DocumentAttention, install

    table = byte_lengths(tokenizer, model.config.vocab_size)
    collate = PackedCollator(dataset.pad_id)
    handle = install(model, DocumentAttention("mask"))
    rows = scoring.select_rows(dataset, max_tokens)
    name = os.path.basename(os.path.normpath(path))
    try:
        for category, indices in tqdm(rows.items(), desc=f"evaluate {name}", unit="category", disable=None):
            for index in indices:
                batch = collate([dataset[index]])
                count, nbytes = scoring.label_figures(batch["labels"], table)
                with torch.no_grad():
                    nll = scoring.batch_nll(model, {k: v.to(device) for k, v in batch.items()}, count)
                for key in (f"file:{name}", f"category:{category}"):
                    tally.add(key, nll, count, nbytes)
    finally:
        handle.remove()


def main(argv=None) -> Dict[str, dict]:
    p = argparse.ArgumentParser(prog=command_name(__spec__), description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="HF model folder (with its tokenizer), e.g. an export")
    p.add_argument("--data", required=True,
                   help="Comma-separated .jsonl / .txt files and prepared dataset folders (prepare_*_dataset.py)")
    p.add_argument("--max_length", type=int, default=2048, help="Window length for text files")
    p.add_argument("--max_tokens", type=int, default=0,
                   help="Prepared datasets: score whole rows until each category has this many tokens (0: all), "
                        "the rows train.py --eval_max_tokens scores")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default=None, help="Also write the report as JSON here")
    args = p.parse_args(argv)

    def body():
        check_output_file(args.output, "--output")
        report = evaluate(args.model, [f for f in args.data.split(",") if f], args.max_length, args.device,
                          args.max_tokens)
        print(f"{'':32s} {'loss':>8s} {'ppl':>10s} {'bits/byte':>10s} {'tokens':>9s}")
        for key, r in report.items():
            print(f"{key:32s} {r['loss']:8.4f} {r['perplexity']:10.2f} {r['bits_per_byte']:10.4f} {r['tokens']:9d}")
        if args.output:
            write_json(args.output, report)
        return report

    return run_cli(body)


if __name__ == "__main__":
    main()
