"""Forward and backward of one micro-batch for any task under any plugin, and the same forward without gradients.

Plugins differ here in two ways only, both decided once from the layout (plugins.parallel_layout_of): a
pipeline runs the forward, the criterion and the backward inside `booster.execute_pipeline`, whose schedule
divides each of its micro-batches' losses by their number (undone here); elsewhere the loop runs the model
under its own autocast, and micro-steps before the last may skip the gradient all-reduce.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Optional, Sequence

import torch

from . import faults
from .tasks import LossComponent, Task


class MicroStep:
    def __init__(self, booster, model, optimizer, layout, task: Task, components: Sequence[LossComponent],
                 autocast_dtype: Optional[torch.dtype], device_type: str, microbatch_size: int, neftune=None):
        self.booster, self.model, self.optimizer, self.layout = booster, model, optimizer, layout
        self.task, self.components = task, list(components)
        self.autocast_dtype, self.device_type = autocast_dtype, device_type
        self.microbatch_size = microbatch_size
        self.neftune = neftune

    def _amp(self):
        return torch.autocast(self.device_type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()

    def _forward(self, inputs: dict):
        keys = self.task.model_keys
        return self.model(**(inputs if keys is None else {k: inputs[k] for k in keys}))

    def forward_backward(self, batch: dict, scale: float, last_micro: bool, attempt: int) -> Optional[torch.Tensor]:
        """The micro-batch's summed loss weighted by `scale` per unit, back-propagated; the loss (detached), or None
        on a pipeline stage that holds none. `attempt` numbers the step for fault injection (faults.py)."""
        inputs = self.task.inputs(batch)
        if self.neftune:
            self.neftune.set_lengths(batch["attention_mask"].sum(1))
        if self.layout.pipeline:
            per_unit = scale * (batch["input_ids"].shape[0] // self.microbatch_size)

            def criterion(outputs, micro):
                return faults.corrupt_loss(self.task.loss_sum(outputs, micro) * per_unit, attempt)

            out = self.booster.execute_pipeline(iter([inputs]), self.model, criterion=criterion,
                                                optimizer=self.optimizer, return_loss=True)
            return out["loss"].detach() if out["loss"] is not None else None
        skip_sync = not last_micro and self.layout.grad_accumulation == "no_sync"
        with self.booster.no_sync(self.model, self.optimizer) if skip_sync else nullcontext():
            with self._amp():
                loss = faults.corrupt_loss(self.task.loss_sum(self._forward(inputs), inputs) * scale, attempt)
                weight = scale * self.task.units(batch)
                optimised = loss
                for component in self.components:  # optimised with the task's loss; the log reports them apart
                    optimised = optimised + component.loss(inputs["attention_mask"], weight)
            self.booster.backward(optimised, self.optimizer)
        return loss.detach()

    @torch.no_grad()
    def forward_only(self, batch: dict, read: Callable[[object, dict], torch.Tensor]) -> Optional[torch.Tensor]:
        """`read(outputs, inputs)` of a forward without gradients, in the plugin's own precision and layout
        (None on a pipeline stage that holds no output)."""
        inputs = self.task.inputs(batch)
        if self.layout.pipeline:
            found = []

            def criterion(outputs, micro):
                found.append(read(outputs, micro))
                return outputs.logits.new_zeros(())

            self.booster.execute_pipeline(iter([inputs]), self.model, criterion=criterion, optimizer=None,
                                          return_loss=False)
            return torch.cat(found) if found else None
        with self._amp():
            return read(self._forward(inputs), inputs)
