"""Direct preference optimisation: the losses, the reference log-probs, and one DPO step under any plugin.

A batch row is one pair, chosen then rejected (data/preference.py); document attention keeps the two
apart, so one forward gives both sequences' summed log-probs (`sequence_logps`). Losses follow TRL's
DPOTrainer.dpo_loss (trl/trainer/dpo_trainer.py) and CPOTrainer (simpo) / ORPOTrainer (orpo):

- sigmoid: -log σ(β((πc - πr) - (ρc - ρr)))               rewards β(πc - ρc), β(πr - ρr)
- ipo:     ((πc - πr) - (ρc - ρr) - 1/(2β))², log-probs averaged per response token (as TRL does)
- simpo:   -log σ(β(πc/|c| - πr/|r|) - γ), no reference    rewards β πc/|c|, β πr/|r|
- orpo:    -πc/|c| - β log σ(log odds(πc/|c|) - log odds(πr/|r|)), no reference; rewards as simpo

Reference log-probs (sigmoid, ipo) are those of the starting weights, frozen. They are computed once,
before the first step, by a no-grad pass of the boosted model over the training set, in the plugin's own
precision and parallel layout, and kept as one table (2 floats a pair) in SAVE_DIR/reference_logps.
safetensors; every checkpoint carries a copy, so a resumed run reads the very numbers it started with.
Why not a frozen second model: it would double the weights in memory under every plugin, and under
Gemini, ZeRO and 3d it would have to be sharded and pipelined like the policy; the pass costs one forward
per pair (a third of a training step), once. (With LoRA the reference is the model with its adapters
disabled: the same pass, run with adapters off, or per step.)
"""

from __future__ import annotations

import math
import os
import shutil
from contextlib import nullcontext
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..data.packing import IGNORE_INDEX
from ..model.doc_attention import segment_ids
from . import faults
from ..errors import InputError

LOSSES = ("sigmoid", "ipo", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")
REFERENCE_FILE = "reference_logps.safetensors"
# Per-pair figures summed over the step (then divided by its pairs): what metrics.jsonl and TensorBoard get.
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin")
MODEL_KEYS = ("input_ids", "attention_mask", "position_ids")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor,
                   attention_mask: Optional[torch.Tensor] = None):
    """(b, 2) summed log-probs of the labelled tokens of each row's two documents (chosen, rejected), and
    (b, 2) their token counts. Logits at t predict the token at t + 1; computed in fp32."""
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    logits = logits[:, :-1].float()
    # the target's logit minus the log-partition: no (b, s, vocab) log-softmax tensor besides the fp32 logits
    logp = logits.gather(2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    seg = segment_ids(position_ids, attention_mask)[:, 1:]
    sums, counts = [], []
    for k in (0, 1):
        where = mask & (seg == k)
        sums.append((logp * where).sum(1))
        counts.append(where.sum(1))
    return torch.stack(sums, 1), torch.stack(counts, 1)


def preference_loss(policy: torch.Tensor, reference: Optional[torch.Tensor], counts: torch.Tensor, loss_type: str,
                    beta: float, gamma: float = 0.5):
    """Per-pair losses (b,) and rewards (b, 2), from (b, 2) summed log-probs [chosen, rejected]."""
    if loss_type in ("sigmoid", "ipo"):
        pi, ref = policy, reference.to(policy.dtype)
        if loss_type == "ipo":
            pi, ref = pi / counts, ref / counts
        logits = (pi[:, 0] - pi[:, 1]) - (ref[:, 0] - ref[:, 1])
        if loss_type == "sigmoid":
            losses = -F.logsigmoid(beta * logits)
        else:
            losses = (logits - 1 / (2 * beta)) ** 2
        return losses, beta * (pi - ref).detach()
    mean = policy / counts
    if loss_type == "simpo":
        losses = -F.logsigmoid(beta * (mean[:, 0] - mean[:, 1]) - gamma)
    elif loss_type == "orpo":
        log_odds = (mean[:, 0] - mean[:, 1]) - (torch.log1p(-torch.exp(mean[:, 0])) - torch.log1p(-torch.exp(mean[:, 1])))
        losses = -mean[:, 0] - beta * F.logsigmoid(log_odds)
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r}; one of {LOSSES}")
    return losses, beta * mean.detach()


class DPOTask:
    """What `--task dpo` changes in the Trainer: the step's unit (pairs, not label tokens), the forward and
    loss, the reference table, and four more metrics."""

    def __init__(self, trainer):
        self.t = trainer
        self.cfg = trainer.cfg
        self.reference: Optional[torch.Tensor] = None  # (pairs, 2) float32 on every rank
        self.sums = torch.zeros(len(METRICS), dtype=torch.float64, device=trainer.device)  # this step's metric
        # sums (owner ranks), kept on the device: read once per step, in the step's one all_reduce

    # ---- reference log-probs -------------------------------------------------------------------------
    def start(self, resumed_from: Optional[str]) -> None:
        """Load the reference table from the resumed checkpoint, or compute it from the starting weights."""
        if self.cfg.dpo_loss in REFERENCE_FREE:
            return
        path = os.path.join(self.cfg.save_dir, REFERENCE_FILE)
        if resumed_from:
            self.reference = self._load(os.path.join(resumed_from, REFERENCE_FILE))
        else:
            self.reference = self._compute()
            if self.t.rank == 0:
                from safetensors.torch import save_file

                save_file({"logps": self.reference}, path + ".tmp", metadata=self._identity())
                os.replace(path + ".tmp", path)
            dist.barrier()
        self.t.checkpointer.extra_files[REFERENCE_FILE] = path
        if resumed_from and self.t.rank == 0 and os.path.abspath(path) != os.path.abspath(
                os.path.join(resumed_from, REFERENCE_FILE)):
            shutil.copyfile(os.path.join(resumed_from, REFERENCE_FILE), path)
        dist.barrier()

    def _identity(self) -> dict:
        """What the table belongs to: the datasets' content hashes and the number of pairs."""
        return {"datasets": ",".join(self.t.dataset.content_hashes), "pairs": str(len(self.t.dataset))}

    def _load(self, path: str) -> torch.Tensor:
        from safetensors import safe_open

        if not os.path.isfile(path):
            raise InputError(f"{path} is missing: the checkpoint holds no DPO reference log-probs; resume it "
                             "with the flags it was saved with, or start a new --save_dir")
        with safe_open(path, framework="pt") as f:
            if (f.metadata() or {}) != self._identity():
                raise InputError(f"{path}: the reference log-probs belong to other --dataset folders than "
                                 "this run's; resume with the datasets the run started with")
            return f.get_tensor("logps")

    def _owner(self) -> bool:
        return self.t.layout.loss_owner

    @torch.no_grad()
    def _compute(self) -> torch.Tensor:
        """One forward pass over every pair, split across data-parallel ranks; the table reaches every rank."""
        t, cfg = self.t, self.cfg
        n = len(t.dataset)
        per_call = cfg.batch_size * (cfg.accumulation_steps if t.layout.pipeline else 1)
        dp, rank = t.layout.dp_size, t.layout.dp_rank
        total = math.ceil(n / (per_call * dp)) * per_call * dp  # every rank runs as many calls (collectives)
        positions = list(range(rank, total, dp))
        table = torch.zeros(n, 2, dtype=torch.float32)
        collate = t.dataloader.collate_fn
        if t.rank == 0:
            print(f"dpo: reference log-probs of {n:,} pairs from the starting weights", flush=True)
        for start in range(0, len(positions), per_call):
            chunk = positions[start:start + per_call]
            batch = collate([t.dataset[min(p, n - 1)] for p in chunk])  # positions past the end repeat the last
            batch = {k: v.to(t.device) for k, v in batch.items()}
            logps = self._logps_no_grad(batch)
            if logps is not None and self._owner():
                for row, p in enumerate(chunk):
                    if p < n:
                        table[p] = logps[row].float().cpu()
        # each pair was written by exactly one rank (its data shard's owner): a sum gathers the table
        table = table.to(t.device)
        dist.all_reduce(table)
        return table.cpu()

    def _logps_no_grad(self, batch: dict) -> Optional[torch.Tensor]:
        t = self.t
        if t.layout.pipeline:
            found = []

            def criterion(outputs, inputs):
                found.append(sequence_logps(outputs.logits, inputs["dpo_labels"], inputs["position_ids"],
                                            inputs["attention_mask"])[0])
                return outputs.logits.new_zeros(())

            t.booster.execute_pipeline(iter([self._model_batch(batch)]), t.model, criterion=criterion, optimizer=None,
                                       return_loss=False)
            return torch.cat(found) if found else None
        with self._amp():
            out = t.model(**{k: batch[k] for k in MODEL_KEYS})
            return sequence_logps(out.logits, batch["labels"], batch["position_ids"], batch["attention_mask"])[0]

    # ---- one micro-batch ------------------------------------------------------------------------------
    def _amp(self):
        dtype = self.t.autocast_dtype
        return torch.autocast(self.t.device.type, dtype=dtype) if dtype else nullcontext()

    def _model_batch(self, batch: dict) -> dict:
        """The keys the model gets, plus what the pipeline criterion reads: the model's forward takes **kwargs,
        so extra keys ride along through every stage (labels renamed: with `labels` it would compute its own loss)."""
        out = {k: batch[k] for k in MODEL_KEYS}
        out["dpo_labels"] = batch["labels"]
        if self.reference is not None:
            out["ref_logps"] = self.reference[batch["pair_index"].cpu()].to(batch["input_ids"].device)
        return out

    def _loss_sum(self, logits, inputs: dict, labels) -> torch.Tensor:
        """The micro-batch's summed per-pair loss; its metric sums go into `self.sums`."""
        policy, counts = sequence_logps(logits, labels, inputs["position_ids"], inputs["attention_mask"])
        losses, rewards = preference_loss(policy, inputs.get("ref_logps"), counts, self.cfg.dpo_loss, self.cfg.beta,
                                          self.cfg.simpo_gamma)
        rewards = rewards.double()
        margin = rewards[:, 0] - rewards[:, 1]
        self.sums += torch.stack([rewards[:, 0].sum(), rewards[:, 1].sum(), (margin > 0).double().sum(),
                                  margin.sum()]).to(self.sums.device)
        return losses.sum()

    def units(self, batches) -> int:
        return sum(b["input_ids"].shape[0] for b in batches)

    def forward_backward(self, batch: dict, scale: float, last_micro: bool) -> Optional[torch.Tensor]:
        """Forward and backward of one micro-batch, its summed pair losses weighted by `scale` per pair."""
        t = self.t
        inputs = self._model_batch(batch)
        if t.layout.pipeline:
            per_pair = scale * (batch["input_ids"].shape[0] // self.cfg.microbatch_size)  # undo the schedule's mean

            def criterion(outputs, micro):
                loss = self._loss_sum(outputs.logits, micro, micro["dpo_labels"]) * per_pair
                return faults.corrupt_loss(loss, t.attempts)

            out = t.booster.execute_pipeline(iter([inputs]), t.model, criterion=criterion, optimizer=t.optimizer,
                                             return_loss=True)
            return out["loss"].detach() if out["loss"] is not None else None
        skip_sync = not last_micro and t.layout.grad_accumulation == "no_sync"
        sync_ctx = t.booster.no_sync(t.model, t.optimizer) if skip_sync else nullcontext()
        with sync_ctx:
            with self._amp():
                out = t.model(**{k: inputs[k] for k in MODEL_KEYS})
                loss = faults.corrupt_loss(self._loss_sum(out.logits, inputs, inputs["dpo_labels"]) * scale,
                                           t.attempts)
                # MoE: the router's terms, weighted as this micro-batch's pairs are (one pair a row)
                weight = scale * inputs["input_ids"].shape[0]
                optimised = loss + t.router.loss(inputs["attention_mask"], weight) if t.router else loss
            t.booster.backward(optimised, t.optimizer)
        return loss.detach()

    # ---- the step's metrics ---------------------------------------------------------------------------
    def take_sums(self) -> list:
        """This rank's metric sums of the step (zeros off the loss-owning ranks), and a fresh start."""
        sums = self.sums if self._owner() else torch.zeros_like(self.sums)
        self.sums = torch.zeros_like(self.sums)
        return list(sums.unbind())

    @staticmethod
    def metrics(totals: list, pairs: float) -> dict:
        return {name: value / max(pairs, 1.0) for name, value in zip(METRICS, totals)}
