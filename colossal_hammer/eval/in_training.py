"""Held-out loss and bits per byte while training: `train.py --eval_dataset NAME=DIR --eval_interval N`.

Every N optimizer steps and at the end, each eval dataset (a prepared folder, pretraining or SFT) is
scored by the model being trained, split over the data-parallel ranks, and logged as one metrics record
(keys in `record_of`). The figures are eval.perplexity's on the same weights: the rows
(scoring.select_rows), the counting (scoring.label_figures, scoring.batch_nll) and the sums (scoring.Tally)
are the same code.

Training must not notice: the model is evaluated in eval mode (NEFTune and dropout off) under no_grad,
the data is read by index here (no DataLoader: creating its iterator draws from torch's RNG), every
RNG state and the pipeline schedule's state are saved before and restored after, and nothing of the
training sampler is touched. So the training losses are bit-identical with and without eval.

Parallelism: the rows of each category are cut into groups of dp x batch rows; data-parallel rank r
scores the r-th batch of every group. Every rank runs the same number of forward calls (ZeRO/Gemini
gather parameters collectively, tensor and pipeline stages exchange activations), so a rank whose share
of the last group is short fills its batch with rows whose labels are all ignored. Only ranks that hold
a loss counted once per data shard (`layout.loss_owner`) add to the sums, which one all_reduce adds up.
"""

from __future__ import annotations

import copy
import random
from contextlib import contextmanager
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..data.loader import BinnedDataset, PackedCollator
from ..data.packing import IGNORE_INDEX
from . import scoring
from .token_bytes import byte_lengths


class InTrainingEval:
    def __init__(self, sets: List[Tuple[str, str]], max_tokens: int, tokenizer_dir: str, vocab_size: int,
                 layout, rows_per_batch: int, pad_to: Optional[int], interval: int):
        from ..data.tokenize import load_tokenizer

        self.layout = layout
        self.rows_per_batch = rows_per_batch
        self.interval = interval
        self.table = byte_lengths(load_tokenizer(tokenizer_dir), vocab_size)
        self.keys: List[Tuple[str, str]] = []  # (set name, category), one per row of the summed tensor
        # (key, dataset, collate, this rank's rows, filler row)
        self.batches: List[Tuple[int, BinnedDataset, PackedCollator, List[int], int]] = []
        for name, folder in sets:
            dataset = BinnedDataset([folder])
            collate = PackedCollator(dataset.pad_id, pad_to)
            for category, indices in scoring.select_rows(dataset, max_tokens).items():
                self.keys.append((name, category))
                group = rows_per_batch * layout.dp_size
                for begin in range(0, len(indices), group):
                    mine = indices[begin:begin + group][layout.dp_rank * rows_per_batch:][:rows_per_batch]
                    filler = indices[begin]  # scored with every label ignored when this rank's share is short
                    self.batches.append((len(self.keys) - 1, dataset, collate, mine, filler))
        self.last_step: Optional[int] = None

    def due(self, step: int, final: bool) -> bool:
        if step == self.last_step:
            return False
        return final or (self.interval > 0 and step % self.interval == 0)

    def _batch(self, dataset, collate, mine: List[int], filler: int, pipeline: bool) -> dict:
        rows = [dataset[i] for i in mine]
        # The pipeline takes whole batches of the training shape; elsewhere only an empty share needs a row.
        short = (self.rows_per_batch - len(rows)) if pipeline else (0 if rows else 1)
        batch = collate(rows + [dataset[filler]] * short)
        if short:
            batch["labels"][len(rows):] = IGNORE_INDEX
        return batch

    def run(self, step: int, model, booster, plugin, device) -> dict:
        """Score every eval set; returns the metrics record. Collective: every rank calls it at the same step."""
        self.last_step = step
        sums = torch.zeros(len(self.keys), 3, dtype=torch.float64)
        with _untouched(model, plugin if self.layout.pipeline else None), torch.no_grad():
            for key, dataset, collate, mine, filler in self.batches:
                batch = self._batch(dataset, collate, mine, filler, self.layout.pipeline)
                count, nbytes = scoring.label_figures(batch["labels"], self.table)
                batch = {k: v.to(device) for k, v in batch.items()}
                if self.layout.pipeline:
                    nll = _pipeline_nll(model, booster, batch)
                else:
                    nll = scoring.batch_nll(model, batch, count)
                if self.layout.loss_owner:
                    sums[key] += torch.tensor([nll, count, nbytes], dtype=torch.float64)
        if dist.is_initialized():
            reduced = sums.to(device)
            dist.all_reduce(reduced)
            sums = reduced.cpu()
        return record_of(step, self.keys, sums)


def record_of(step: int, keys: List[Tuple[str, str]], sums: torch.Tensor) -> dict:
    """{"step", "kind": "eval", "eval/NAME/loss", "eval/NAME/bpb", "eval/NAME/tokens", "eval/NAME/bytes",
    and the same four under eval/NAME/CATEGORY/}: a set's figures are its categories' sums, divided once."""
    tallies = scoring.Tally()
    for (name, category), (nll, tokens, nbytes) in zip(keys, sums.tolist()):
        for key in (name, f"{name}/{category}"):
            tallies.add(key, nll, int(round(tokens)), int(round(nbytes)))
    record = {"step": step, "kind": "eval"}
    for key, f in tallies.report().items():
        record.update({f"eval/{key}/loss": f["loss"], f"eval/{key}/bpb": f["bits_per_byte"],
                       f"eval/{key}/tokens": f["tokens"], f"eval/{key}/bytes": f["bytes"]})
    return record


def _pipeline_nll(model, booster, batch: dict) -> float:
    """Forward-only through the pipeline; the last stage sums each micro-batch's loss times its label tokens."""
    total = [0.0]

    def criterion(outputs, inputs):
        count = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
        if count:
            total[0] += float(outputs.loss) * count
        return outputs.loss.new_zeros(())

    # Under no_sync, execute_pipeline returns before synchronising gradients (there are none to sync).
    with model.no_sync():
        booster.execute_pipeline(iter([batch]), model, criterion=criterion, optimizer=None, return_loss=True)
    return total[0]


@contextmanager
def _untouched(model, plugin):
    """Eval mode, then back; every RNG and the pipeline schedule's state restored as they were."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    schedule = copy.copy(vars(plugin.scheduler)) if plugin is not None else None
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        if schedule is not None:
            vars(plugin.scheduler).clear()
            vars(plugin.scheduler).update(schedule)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


def build(cfg, layout, vocab_size: int, tokenizer_dir: str) -> Optional[InTrainingEval]:
    """The evaluator a run's flags ask for (None without --eval_dataset)."""
    if not cfg.eval_dataset:
        return None
    from ..rules import fixed_row_length

    rows = cfg.batch_size * (cfg.accumulation_steps if layout.pipeline else 1)
    return InTrainingEval(cfg.eval_sets(), cfg.eval_max_tokens, tokenizer_dir, vocab_size, layout, rows,
                          cfg.max_length if fixed_row_length(cfg) else None, cfg.eval_interval)
