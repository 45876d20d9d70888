"""The training loop: one Trainer for every Booster plugin.

Plugins differ in three places only, all decided once in `plugins.layout_of`: how a step runs
(plain forward/backward, or `execute_pipeline` under pipeline parallelism), which ranks hold a loss
that counts towards the data-parallel mean, and whether micro-steps may skip the gradient all-reduce.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

from .. import compat
from ..data.random_data import RandomTokenDataset
from ..model.build import DTYPES, build_model
from .config import TrainConfig
from .metrics import MetricsLogger
from .plugins import build_plugin, describe_plugin, layout_of
from .schedule import cosine_with_warmup, default_warmup_steps


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: norms' gains and biases (1-D tensors) are left alone."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    from colossalai.nn.optimizer import HybridAdam

    return HybridAdam(groups, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay, adamw_mode=True)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        compat.activate()
        import colossalai
        from colossalai.accelerator import get_accelerator
        from colossalai.booster import Booster
        from colossalai.booster.plugin import GeminiPlugin, HybridParallelPlugin, TorchDDPPlugin
        from colossalai.lazy import LazyInitContext

        colossalai.launch_from_torch(seed=cfg.seed, verbose=False)
        self.device = get_accelerator().get_current_device()
        self.rank = dist.get_rank()
        self.plugin = build_plugin(cfg)
        self.layout = layout_of(self.plugin, cfg)
        is_ddp = isinstance(self.plugin, TorchDDPPlugin)
        if is_ddp and cfg.mixed_precision == "fp16" and self.device.type == "cpu":
            raise SystemExit("error: --plugin ddp with fp16 needs a GPU (torch AMP loss scaling); use bf16 or fp32")
        # DDP keeps fp32 parameters; bf16 there means autocast compute over fp32 master weights.
        # fp16 goes through the Booster's torch-AMP (with loss scaling). Other plugins own precision.
        self.autocast_dtype = DTYPES[cfg.mixed_precision] if is_ddp and cfg.mixed_precision == "bf16" else None
        booster_precision = "fp16" if is_ddp and cfg.mixed_precision == "fp16" else None
        self.booster = Booster(plugin=self.plugin, mixed_precision=booster_precision)
        # Only DDP leaves clipping to us; the ZeRO, Gemini and hybrid optimizers clip with max_norm.
        self.clip_here = is_ddp and cfg.grad_clip > 0

        lazy = LazyInitContext(default_device=self.device) if isinstance(
            self.plugin, (GeminiPlugin, HybridParallelPlugin)) else None
        dtype = torch.float32 if is_ddp else DTYPES[cfg.mixed_precision]
        model = build_model(cfg.pretrained, cfg.model_config, cfg.seed, dtype=dtype, lazy_ctx=lazy)
        if cfg.use_grad_checkpoint:
            model.gradient_checkpointing_enable()
        model.train()
        self.num_params = sum(p.numel() for p in model.parameters())

        dataset = RandomTokenDataset(cfg.num_samples, cfg.max_length, model.config.vocab_size, seed=cfg.seed)
        dataloader = self.plugin.prepare_dataloader(
            dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed
        )
        self.steps_per_epoch = len(dataloader) // cfg.accumulation_steps
        if self.steps_per_epoch == 0:
            raise SystemExit(
                f"error: {len(dataset)} samples give no optimizer step at batch_size {cfg.batch_size} x "
                f"accumulation {cfg.accumulation_steps} x data-parallel {self.layout.dp_size}"
            )
        self.total_steps = cfg.num_epochs * self.steps_per_epoch
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else default_warmup_steps(self.total_steps)
        optimizer = build_optimizer(cfg, model)
        scheduler = cosine_with_warmup(optimizer, self.total_steps, warmup)
        self.model, self.optimizer, _, self.dataloader, self.lr_scheduler = self.booster.boost(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, dataloader=dataloader
        )
        self.step = 0
        self.epoch = 0
        self.metrics = MetricsLogger(cfg.tensorboard_dir, enabled=self.rank == 0)
        if self.rank == 0:
            os.makedirs(cfg.tensorboard_dir, exist_ok=True)
            with open(os.path.join(cfg.tensorboard_dir, "config.json"), "w", encoding="utf-8") as f:
                f.write(cfg.to_json())
            run_info = describe_plugin(self.plugin)
            run_info.update(world_size=dist.get_world_size(), data_parallel_size=self.layout.dp_size,
                            cpu_compat=compat.is_active(), autocast=str(self.autocast_dtype), num_params=self.num_params)
            with open(os.path.join(cfg.tensorboard_dir, "run_info.json"), "w", encoding="utf-8") as f:
                json.dump(run_info, f, indent=2)

    # ------------------------------------------------------------------
    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def _forward_backward(self, batch: dict, last_micro: bool) -> torch.Tensor | None:
        accum = self.cfg.accumulation_steps
        if self.layout.pipeline:
            out = self.booster.execute_pipeline(
                iter([batch]), self.model, criterion=lambda outputs, inputs: outputs.loss / accum,
                optimizer=self.optimizer, return_loss=True,
            )
            return out["loss"].detach() if out["loss"] is not None else None
        skip_sync = not last_micro and self.layout.grad_accumulation == "no_sync"
        sync_ctx = self.booster.no_sync(self.model, self.optimizer) if skip_sync else nullcontext()
        amp_ctx = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with sync_ctx:
            with amp_ctx:
                loss = self.model(**batch).loss / accum
            self.booster.backward(loss, self.optimizer)
        return loss.detach()

    def _global_mean(self, local: torch.Tensor | None) -> float:
        """Mean over data-parallel replicas of a value that `loss_owner` ranks hold (pipeline: last stage)."""
        value = torch.zeros((), dtype=torch.float64, device=self.device)
        if local is not None and self.layout.loss_owner:
            value += local.double()
        dist.all_reduce(value)
        return value.item() / self.layout.dp_size

    def train_step(self, data_iter) -> dict:
        cfg = self.cfg
        start = time.perf_counter()
        loss_sum, tokens = None, 0
        for micro in range(cfg.accumulation_steps):
            batch = self._to_device(next(data_iter))
            tokens += int(batch["attention_mask"].sum())
            loss = self._forward_backward(batch, last_micro=micro == cfg.accumulation_steps - 1)
            if loss is not None:
                loss_sum = loss if loss_sum is None else loss_sum + loss
        grad_norm = self.optimizer.clip_grad_by_norm(cfg.grad_clip) if self.clip_here else None
        self.optimizer.step()
        if grad_norm is None:
            grad_norm = self._grad_norm_from_optimizer()
        self.optimizer.zero_grad()
        lr = self.lr_scheduler.get_last_lr()[0]
        self.lr_scheduler.step()
        self.step += 1
        loss_value = self._global_mean(loss_sum)
        # Every rank counts the tokens it consumed; pipeline/tensor replicas of one data shard see the same batch.
        token_tensor = torch.tensor(float(tokens) / (dist.get_world_size() // self.layout.dp_size), device=self.device)
        dist.all_reduce(token_tensor)
        elapsed = time.perf_counter() - start
        return {"step": self.step, "loss": loss_value, "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "tokens": int(round(token_tensor.item())), "step_time": elapsed,
                "tokens_per_second": token_tensor.item() / elapsed}

    def _grad_norm_from_optimizer(self):
        try:
            return self.optimizer.get_grad_norm()
        except NotImplementedError:
            return None

    def fit(self) -> list[dict]:
        cfg = self.cfg
        history = []
        last_step = self.total_steps if cfg.max_steps is None else min(cfg.max_steps, self.total_steps)
        from tqdm import tqdm

        bar = tqdm(total=last_step, initial=self.step, disable=self.rank != 0, desc="train", unit="step")
        while self.step < last_step:
            self.dataloader.sampler.set_epoch(self.epoch)
            data_iter = iter(self.dataloader)
            for _ in range(self.steps_per_epoch):
                if self.step >= last_step:
                    break
                record = self.train_step(data_iter)
                record["epoch"] = self.epoch
                history.append(record)
                if self.step % cfg.log_interval == 0 or self.step == last_step:
                    self.metrics.log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_second']:.0f}")
                bar.update()
            else:
                self.epoch += 1
        bar.close()
        self.metrics.close()
        return history


def run(cfg: TrainConfig) -> list[dict]:
    trainer = Trainer(cfg)
    if trainer.rank == 0:
        print(f"plugin={cfg.plugin} ({describe_plugin(trainer.plugin)}) world={dist.get_world_size()} "
              f"dp={trainer.layout.dp_size} params={trainer.num_params:,} steps={trainer.total_steps} "
              f"cpu_compat={compat.is_active()}", flush=True)
    history = trainer.fit()
    if trainer.rank == 0:
        print(json.dumps({"final_loss": history[-1]["loss"] if history else None, "steps": len(history)}), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return history
