"""Pretraining data: {"source", "target", "category"} lines → packed rows with loss on target + EOS."""

from __future__ import annotations

import argparse
from typing import List, Optional

from .packing import IGNORE_INDEX
from . import prepare
from ..errors import main_with_errors
from .prepare import PrepareConfig, run_prepare
from .records import RecordProblem, pretrain_fields
from .tokenize import PartTokenizer, pad_id


class PretrainWorker:
    """Callable on a batch of (file_index, line_no, raw) → results in the same order."""

    def __init__(self, tokenizer_dir: str):
        self.tok = PartTokenizer(tokenizer_dir)

    def __call__(self, batch):
        parsed, results = [], []
        for file_index, line_no, raw in batch:
            try:
                parsed.append((file_index, line_no, *pretrain_fields(raw)))
            except RecordProblem as p:
                parsed.append((file_index, line_no, p))
        good = [p for p in parsed if len(p) == 5]
        encoded = iter(self.tok.encode_parts([[s, t] if s else [t] for _, _, s, t, _ in good]))
        for item in parsed:
            if len(item) == 3:
                file_index, line_no, problem = item
                results.append(("skip", file_index, line_no, problem.reason, problem.detail))
                continue
            file_index, line_no, source, _, category = item
            parts = next(encoded)
            source_ids, target_ids = (parts[0], parts[1]) if source else ([], parts[0])
            ids, labels = self.tok.pretrain_example(source_ids, target_ids)
            results.append(("doc", file_index, line_no, category, ids, labels, len(ids) - labels.count(IGNORE_INDEX),
                            None))  # pretraining never cuts a document (long ones are chunked)
        return results


def build_parser() -> argparse.ArgumentParser:
    return prepare.build_parser("Tokenize jsonl into packed, category-binned Arrow datasets for continual pretraining.")


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = PrepareConfig(**vars(args), pack=True)
    result = {}

    def body():
        result.update(run_prepare(cfg, "pretrain", PretrainWorker, lambda: (pad_id(cfg.tokenizer_dir), {})))

    main_with_errors(body)
    return result
