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
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..data.packing import IGNORE_INDEX
from ..model.doc_attention import segment_ids
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
    """`--task dpo` (the Task protocol of tasks.py): the unit is the pair, the loss one of LOSSES over the pair's
    two summed log-probs, and the reference table (sigmoid, ipo) rides along with each micro-batch."""

    model_keys = MODEL_KEYS

    def __init__(self, loss_type: str, beta: float, gamma: float, device: torch.device):
        self.loss_type, self.beta, self.gamma = loss_type, beta, gamma
        self.reference: Optional[torch.Tensor] = None  # (pairs, 2) float32 on every rank
        # this step's metric sums, kept on the device: read once per step, in the step's one all_reduce
        self.sums = torch.zeros(len(METRICS), dtype=torch.float64, device=device)

    # ---- reference log-probs -------------------------------------------------------------------------
    def prepare_reference(self, save_dir: str, resumed_from: Optional[str], dataset, compute) -> dict:
        """Load the reference table from the resumed checkpoint, or compute it (`compute()`, every rank) from the
        starting weights; the files every checkpoint must carry, {name in step-N/: path}."""
        if self.loss_type in REFERENCE_FREE:
            return {}
        path = os.path.join(save_dir, REFERENCE_FILE)
        identity = {"datasets": ",".join(dataset.content_hashes), "pairs": str(len(dataset))}
        rank0 = dist.get_rank() == 0
        if resumed_from:
            saved = os.path.join(resumed_from, REFERENCE_FILE)
            self.reference = _load_reference(saved, identity)
            if rank0 and os.path.abspath(path) != os.path.abspath(saved):
                shutil.copyfile(saved, path)
        else:
            self.reference = compute()
            if rank0:
                from safetensors.torch import save_file

                save_file({"logps": self.reference}, path + ".tmp", metadata=identity)
                os.replace(path + ".tmp", path)
        dist.barrier()
        return {REFERENCE_FILE: path}

    # ---- one micro-batch ------------------------------------------------------------------------------
    def units(self, batch: dict) -> int:
        return batch["input_ids"].shape[0]

    def inputs(self, batch: dict) -> dict:
        """The keys the model gets, plus what the criterion reads: the model's forward takes **kwargs, so under a
        pipeline extra keys ride along through every stage (labels renamed: with `labels` it would compute its
        own loss)."""
        out = {k: batch[k] for k in MODEL_KEYS}
        out["dpo_labels"] = batch["labels"]
        if self.reference is not None:
            out["ref_logps"] = self.reference[batch["pair_index"].cpu()].to(batch["input_ids"].device)
        return out

    def loss_sum(self, outputs, inputs: dict) -> torch.Tensor:
        """The micro-batch's summed per-pair loss; its metric sums go into `self.sums`."""
        policy, counts = sequence_logps(outputs.logits, inputs["dpo_labels"], inputs["position_ids"],
                                        inputs["attention_mask"])
        losses, rewards = preference_loss(policy, inputs.get("ref_logps"), counts, self.loss_type, self.beta,
                                          self.gamma)
        rewards = rewards.double()
        margin = rewards[:, 0] - rewards[:, 1]
        self.sums += torch.stack([rewards[:, 0].sum(), rewards[:, 1].sum(), (margin > 0).double().sum(),
                                  margin.sum()]).to(self.sums.device)
        return losses.sum()

    # ---- the step's metrics ---------------------------------------------------------------------------
    def take_sums(self, owner: bool) -> list:
        sums = self.sums if owner else torch.zeros_like(self.sums)
        self.sums = torch.zeros_like(self.sums)
        return list(sums.unbind())

    def metrics(self, totals: list, units: float, dp_size: int) -> dict:
        return {name: value / max(units, 1.0) for name, value in zip(METRICS, totals)}


def policy_logps(outputs, inputs: dict) -> torch.Tensor:
    """(b, 2) summed log-probs of each pair's chosen and rejected response (a MicroStep.forward_only reader)."""
    return sequence_logps(outputs.logits, inputs["dpo_labels"], inputs["position_ids"], inputs["attention_mask"])[0]


def compute_reference(dataset, collate, forward_only, per_call: int, layout, device) -> torch.Tensor:
    """The (pairs, 2) table of the starting weights' log-probs: one no-grad forward over every pair, split across
    data-parallel ranks (`forward_only(batch, policy_logps)`); the table reaches every rank."""
    n = len(dataset)
    dp, rank = layout.dp_size, layout.dp_rank
    total = math.ceil(n / (per_call * dp)) * per_call * dp  # every rank runs as many calls (collectives)
    positions = list(range(rank, total, dp))
    table = torch.zeros(n, 2, dtype=torch.float32)
    if dist.get_rank() == 0:
        print(f"dpo: reference log-probs of {n:,} pairs from the starting weights", flush=True)
    for start in range(0, len(positions), per_call):
        chunk = positions[start:start + per_call]
        batch = collate([dataset[min(p, n - 1)] for p in chunk])  # positions past the end repeat the last
        logps = forward_only({k: v.to(device) for k, v in batch.items()}, policy_logps)
        if logps is not None and layout.loss_owner:
            for row, p in enumerate(chunk):
                if p < n:
                    table[p] = logps[row].float().cpu()
    # each pair was written by exactly one rank (its data shard's owner): a sum gathers the table
    table = table.to(device)
    dist.all_reduce(table)
    return table.cpu()


def _load_reference(path: str, identity: dict) -> torch.Tensor:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise InputError(f"{path} is missing: the checkpoint holds no DPO reference log-probs; resume it "
                         "with the flags it was saved with, or start a new --save_dir")
    with safe_open(path, framework="pt") as f:
        if (f.metadata() or {}) != identity:
            raise InputError(f"{path}: the reference log-probs belong to other --dataset folders than "
                             "this run's; resume with the datasets the run started with")
        return f.get_tensor("logps")
