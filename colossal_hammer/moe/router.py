"""The router's share of the optimised loss, and what the log shows of the routing.

Mixtral's router is a linear `gate` per layer that scores the experts; each token goes to its top-k.
Nothing in the language-model loss keeps the router from sending most tokens to a few experts, which
then train while the others starve (and, under expert parallelism, one rank does most of the work).
Two terms counter that, both from the router logits of every MoE layer:

- the load-balancing loss of Switch Transformer / Mixtral (`load_balancing_loss`): E * sum over experts of
  (fraction of top-k slots the expert got) * (its mean router probability); its minimum is reached when both
  are uniform, where it equals top_k. Weighted by --router_aux_loss_coef (Mixtral: 0.02).
- the z-loss of ST-MoE: mean squared logsumexp of the logits, which keeps them small (bf16-safe).
  Weighted by --router_z_loss_coef (default 0: off).

The logits are read by forward hooks on each layer's `gate`, not from HF's `output_router_logits`: HF
adds its own aux loss to `.loss` there (with its coefficient, and over a 2-D attention mask that document
attention has by then replaced by a 4-D one), and Colossal-AI's expert-parallel block calls the same
`gate`, so one hook serves every plugin. Only padding is left out (the loop's 2-D attention mask).
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from ..model.moe_configs import is_moe


def moe_blocks(model) -> list:
    """The sparse MLP blocks, in layer order: HF's MixtralSparseMoeBlock or Colossal-AI's EP version of it
    (which changes the class of the same module), found by what they hold."""
    return [m for m in model.modules() if all(hasattr(m, a) for a in ("gate", "experts", "top_k"))]


def load_balancing_loss(logits: torch.Tensor, keep: torch.Tensor, num_experts: int, top_k: int) -> torch.Tensor:
    """HF's `load_balancing_loss_func` over (tokens, experts) logits of all layers stacked, counting only the
    rows where `keep` (tokens,) is true."""
    probs = F.softmax(logits.float(), dim=-1)
    chosen = F.one_hot(torch.topk(probs, top_k, dim=-1).indices, num_experts).float()  # (tokens, k, E)
    weight = keep.float()
    count = weight.sum().clamp(min=1.0)
    slots = (chosen * weight[:, None, None]).sum(0) / count  # (k, E): share of the i-th choice per expert
    mean_prob = (probs * weight[:, None]).sum(0) / count  # (E,)
    return (slots * mean_prob[None]).sum() * num_experts


def z_loss(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    weight = keep.float()
    return (torch.logsumexp(logits.float(), dim=-1).square() * weight).sum() / weight.sum().clamp(min=1.0)


class RouterLosses:
    """Collects the router logits of one forward, turns them into the loss term, and sums what the step log
    reports (a LossComponent of training/tasks.py). Stateless between steps: nothing to checkpoint."""

    def __init__(self, model, aux_coef: float, z_coef: float):
        self.blocks = moe_blocks(model)
        if not self.blocks:
            raise ValueError("an MoE config but no sparse MLP block with a gate in the model")
        self.num_experts = self.blocks[0].num_experts
        self.top_k = self.blocks[0].top_k
        self.aux_coef, self.z_coef = aux_coef, z_coef
        self._logits: List[Optional[torch.Tensor]] = [None] * len(self.blocks)
        for i, block in enumerate(self.blocks):
            block.gate.register_forward_hook(self._hook(i))
        self._reset_sums()

    def _hook(self, layer: int):
        def hook(module, args, output):
            # training forwards only: evaluation and the DPO reference run without gradients
            if torch.is_grad_enabled() and module.training:
                self._logits[layer] = output
        return hook

    def _reset_sums(self) -> None:
        # device tensors (and 0.0 until the first micro-step): summed without a host sync until the step's
        # one all_reduce
        self._aux = 0.0
        self._z = 0.0
        self._load = 0.0

    def loss(self, attention_mask: torch.Tensor, weight: float) -> torch.Tensor:
        """The router term of the micro-batch just forwarded, times `weight` (the weight its LM loss gets)."""
        logits = self._logits
        self._logits = [None] * len(self.blocks)
        if any(x is None for x in logits):
            raise RuntimeError("a training forward left some MoE layer's router logits unrecorded")
        keep = attention_mask.reshape(-1).to(torch.bool)
        with torch.no_grad():
            self._load = self._load + torch.stack([
                torch.bincount(torch.topk(x[keep].float(), self.top_k, dim=-1).indices.reshape(-1),
                               minlength=self.num_experts) for x in logits]).double()
        stacked = torch.cat(logits)
        keep_all = keep.repeat(len(logits))
        aux = load_balancing_loss(stacked, keep_all, self.num_experts, self.top_k)
        z = z_loss(stacked, keep_all)
        self._aux = self._aux + aux.detach().double() * weight
        self._z = self._z + z.detach().double() * weight
        return (self.aux_coef * aux + self.z_coef * z) * weight

    def take_sums(self, owner: bool) -> list:
        """This rank's sums since the last call, flat, for the loop's one all_reduce (zeros on a rank whose
        losses do not count, like the LM loss: a tensor-parallel replica of the same tokens)."""
        load = self._load if torch.is_tensor(self._load) else torch.zeros(len(self.blocks), self.num_experts)
        sums = [self._aux, self._z, *load.reshape(-1).unbind()]
        self._reset_sums()
        return sums if owner else [0.0] * len(sums)

    def metrics(self, totals: list, units: float, dp_size: int) -> dict:
        """Step-log fields from the summed `take_sums`: the token-weighted mean aux and z losses (each rank's
        share carried the data-parallel factor, as the LM loss's), and the load per layer and expert as a
        fraction of that layer's top-k slots, with its coefficient of variation (0: perfectly even)."""
        aux, z, *load = (float(v) for v in totals)
        load = torch.tensor(load, dtype=torch.float64).reshape(len(self.blocks), self.num_experts)
        shares = load / load.sum(1, keepdim=True).clamp(min=1.0)
        cv = load.std(1, unbiased=False) / load.mean(1).clamp(min=1e-12)
        return {"router_aux_loss": aux / dp_size, "router_z_loss": z / dp_size,
                "expert_load": [[round(v, 6) for v in row] for row in shares.tolist()],
                "expert_load_cv": float(cv.mean())}


def build(cfg, model) -> Optional[RouterLosses]:
    """The router terms for an MoE model (None for a dense one). Records the coefficient in the config, so an
    exported model says what it was trained with."""
    if not is_moe(model.config):
        return None
    model.config.router_aux_loss_coef = cfg.router_aux_loss_coef
    return RouterLosses(model, cfg.router_aux_loss_coef, cfg.router_z_loss_coef)
