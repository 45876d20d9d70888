"""What a training objective gives the loop: the Task protocol, and language modelling as one of them.

The loop knows nothing of any objective. For each step it asks the task how many units its batches hold
(label tokens, pairs), so that the step's loss is a mean over all of them; for each micro-batch, what the
model is given and the summed loss of its outputs; and after the step, the figures the task adds to the
log. DPO is the other task (dpo.py). Loss components (MoE's router terms, moe/router.py) ride on a
task's loss with the same weight per unit, and report their figures the same way.
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

import torch

from ..data.packing import IGNORE_INDEX


class Task(Protocol):
    # batch keys the model's forward takes outside the pipeline (None: all of them); under pipeline
    # parallelism the whole of `inputs()` travels, and the criterion reads the extras on the last stage
    model_keys: Optional[Sequence[str]]

    def units(self, batch: dict) -> int:
        """What the step's loss is a mean over, counted in one micro-batch (a CPU batch: no device sync)."""

    def inputs(self, batch: dict) -> dict:
        """The micro-batch as the model (and, under a pipeline, the criterion) receives it."""

    def loss_sum(self, outputs, inputs: dict) -> torch.Tensor:
        """The micro-batch's loss summed over its units; it may add to the task's metric sums."""

    def take_sums(self, owner: bool) -> list:
        """This rank's metric sums since the last call, flat, for the step's one all_reduce (zeros off the
        ranks whose losses count: `owner` False), and a fresh start."""

    def metrics(self, totals: list, units: float, dp_size: int) -> dict:
        """Step-log fields from the all-reduced `take_sums`."""


class LossComponent(Protocol):
    def loss(self, attention_mask: torch.Tensor, weight: float) -> torch.Tensor:
        """The term of the micro-batch just forwarded, times `weight` (the weight a unit of its task's loss got)."""

    def take_sums(self, owner: bool) -> list: ...

    def metrics(self, totals: list, units: float, dp_size: int) -> dict: ...


def label_tokens(labels: torch.Tensor) -> int:
    """Tokens the loss predicts: label positions after the first that are not ignored."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


class LanguageModelling:
    """Next-token prediction over the labelled tokens (pretraining, SFT): the unit is the label token, and the
    model's own loss (a mean over the micro-batch's label tokens) times their number is the sum."""

    model_keys = None

    def units(self, batch: dict) -> int:
        return label_tokens(batch["labels"])

    def inputs(self, batch: dict) -> dict:
        return batch

    def loss_sum(self, outputs, inputs: dict) -> torch.Tensor:
        count = label_tokens(inputs["labels"])
        # no label token: the model's mean is 0/0, so a zero that still reaches every weight (all ranks must
        # run the same backward: the gradient all-reduce waits for each parameter)
        return outputs.loss * count if count else outputs.logits.sum() * 0.0

    def take_sums(self, owner: bool) -> list:
        return []

    def metrics(self, totals: list, units: float, dp_size: int) -> dict:
        return {}
