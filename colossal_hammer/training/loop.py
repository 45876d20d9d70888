"""The training loop: one Trainer for every Booster plugin.

Plugins differ only in what `plugins` decides once, from the plugin object: how a step runs (plain
forward/backward, or `execute_pipeline` under pipeline parallelism), which ranks hold a loss that
counts towards the data-parallel mean, and whether micro-steps may skip the gradient all-reduce
(`parallel_layout_of`); and what the loop does itself because the plugin does not: autocast, loss scaling,
clipping, lazy init (`precision_plan`). A micro-batch's forward and backward are `micro_step`'s, where the
clipping happens `grad_clip`'s, how a non-finite step is skipped `step_guard`'s.
A run's position is (epoch, step, sampler state, RNG); a checkpoint holds all of it, so a resumed run
continues exactly where the saved one stood.

A step's loss is the mean over every unit of the step (a label token; a pair under `--task dpo`): all
micro-steps, all data-parallel ranks. The task (tasks.py: the Task protocol) gives each micro-batch's summed
loss, weighted by 1/units (times the data-parallel size the plugin divides gradients by), so 5 label tokens
never weigh as much as 2,000. The loop never asks which task or which loss components it runs.
"""

from __future__ import annotations

import json
import math
import os
import time

import torch
import torch.distributed as dist

from .. import compat
from ..model.build import DTYPES, mask_padded_logits, unpadded_vocab_size
from ..adapters import lora
from ..model.neftune import NEFTune
from ..data.loader import join_batches
from ..errors import InputError
from ..eval import in_training
from . import faults, grad_clip, preflight, step_guard
from .checkpoint import Checkpointer
from ..model.doc_attention import attention_pairs
from .components import (attention_implementation, document_attention, eval_tokenizer, make_data, make_model,
                         make_optimizer, model_config_of, tokenizer_folder, weights_source)
from .config import TrainConfig
from .dpo import DPOTask, compute_reference
from .loss_scale import LossScale
from .micro_step import MicroStep
from .tasks import LanguageModelling, label_tokens
from .metrics import MetricsLogger, peak_tflops, training_flops
from ..moe import router as moe_router
from ..model.moe_configs import active_params
from .plugins import build_plugin, describe_plugin, parallel_layout_of, precision_plan, torch_amp_optimizer
from . import schedule


class Trainer:
    """Built in one pass, top to bottom: processes → every check → plugin and layout → model → data → optimizer
    and schedule → boost → what a step uses (task, loss components, clipping) → resume."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        compat.activate()
        import colossalai
        from colossalai.accelerator import get_accelerator
        from colossalai.booster import Booster
        from colossalai.lazy import LazyInitContext

        # processes
        colossalai.launch_from_torch(seed=cfg.seed, verbose=False)
        self.device = get_accelerator().get_current_device()
        self.rank = dist.get_rank()

        # every check, before anything is built (the config's own fields were checked when it was parsed)
        hf_config = model_config_of(cfg)  # read once: the plugin checks it, preflight takes its vocabulary
        self.plugin = build_plugin(cfg, hf_config)  # refuses what the plugin cannot run
        lora.check(cfg, self.device.type == "cuda")
        start = preflight.agreed(lambda: preflight.before_start(
            cfg, unpadded_vocab_size(hf_config), eval_tokenizer(cfg),
            lora_base=weights_source(cfg)[0] if lora.enabled(cfg) else None))
        self.lora_base, self.resumed_from = start["lora_base"], start["resume_from"]

        # plugin and layout
        self.layout = parallel_layout_of(self.plugin)
        precision = precision_plan(self.plugin, cfg)
        if cfg.use_flash_attn and attention_implementation(cfg) != "flash_attention_2" and self.rank == 0:
            print("warning: --use_flash_attn needs a GPU and the flash-attn package (pip install .[gpu]); using "
                  "SDPA, which masks packed rows per document", flush=True)
        self.autocast_dtype = DTYPES[precision.autocast] if precision.autocast else None
        self.booster = Booster(plugin=self.plugin, mixed_precision=precision.booster_precision)

        # model
        lazy = LazyInitContext(default_device=self.device) if precision.lazy_init else None
        model = make_model(cfg, DTYPES[precision.model_dtype], lazy)
        if lora.enabled(cfg):
            model = lora.apply(self.booster, model, cfg)
        self.num_params = sum(p.numel() for p in model.parameters())
        self.num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.model_config = model.config
        preflight.agreed(lambda: preflight.check_free_space(cfg.save_dir, self.num_params))

        # data
        self.dataset, self.sampler, self.dataloader = make_data(
            cfg, unpadded_vocab_size(model.config), self.layout.dp_size, self.layout.dp_rank)
        samples_per_rank = len(self.sampler.global_order(0)) // self.layout.dp_size
        self.steps_per_epoch = samples_per_rank // (cfg.batch_size * cfg.accumulation_steps)
        if self.steps_per_epoch == 0:
            raise InputError(
                f"{len(self.dataset)} samples give no optimizer step at batch_size {cfg.batch_size} x "
                f"accumulation {cfg.accumulation_steps} x data-parallel {self.layout.dp_size}")
        self.total_steps = cfg.num_epochs * self.steps_per_epoch

        # optimizer and schedule
        optimizer = make_optimizer(cfg, model)
        scheduler = schedule.build(cfg, optimizer, self.total_steps)

        # boost
        self.model, self.optimizer, _, _, self.lr_scheduler = self.booster.boost(
            model=model, optimizer=optimizer, lr_scheduler=scheduler)
        if precision.torch_loss_scaling:
            self.optimizer = torch_amp_optimizer(self.optimizer, cfg)
        unwrapped = lora.inner_model(self.model)
        tp_group = getattr(self.plugin, "tp_group", None)
        mask_padded_logits(unwrapped, dist.get_rank(tp_group) if tp_group is not None else 0)

        # what a step uses
        self.task = (DPOTask(cfg.dpo_loss, cfg.beta, cfg.simpo_gamma, self.device) if cfg.task == "dpo"
                     else LanguageModelling())
        router = moe_router.build(cfg, unwrapped)  # MoE models: the router's loss terms and load figures
        self.components = [router] if router else []
        self.micro_step = MicroStep(
            self.booster, self.model, self.optimizer, self.layout, self.task, self.components, self.autocast_dtype,
            self.device.type, cfg.microbatch_size,
            NEFTune(unwrapped.get_input_embeddings(), cfg.neft_alpha) if cfg.use_neft else None)
        self.loss_scale = LossScale(self.optimizer)
        self.clip = grad_clip.clipper(cfg, self.plugin, self.layout, self.model, self.optimizer, self.device,
                                      precision.clip_in_loop)
        self.within_documents = document_attention(cfg).within_documents
        self.peak_tflops = peak_tflops(cfg.peak_tflops, self.device)
        self.evaluator = in_training.build(cfg, self.layout, model.config.vocab_size, eval_tokenizer(cfg))
        self.checkpointer = Checkpointer(self.booster, cfg.save_dir, cfg.keep_last,
                                         tokenizer_folder(weights_source(cfg)[0]), start["chat_template"],
                                         shard_size_mb=cfg.checkpoint_shard_size,
                                         adapter_base=self.lora_base,
                                         per_rank_optimizer=cfg.plugin != "ddp" and cfg.optimizer_checkpoint == "per_rank")
        if isinstance(self.task, DPOTask):  # before resuming: the reference is the starting weights
            per_call = cfg.batch_size * (cfg.accumulation_steps if self.layout.pipeline else 1)
            self.checkpointer.extra_files.update(self.task.prepare_reference(
                cfg.save_dir, self.resumed_from, self.dataset,
                lambda: compute_reference(self.dataset, self.dataloader.collate_fn, self.micro_step.forward_only,
                                          per_call, self.layout, self.device)))

        # resume
        self.step = 0
        self.epoch = 0
        self.bad_steps = 0
        self.attempts = 0  # train_step calls in this process, skipped ones included
        self.last_saved = (None, None)  # (step, folder) of the newest checkpoint that holds this run's weights
        if self.resumed_from:
            self._restore(self.resumed_from)
            self.last_saved = (self.step, self.resumed_from)
        self.metrics = MetricsLogger(cfg.tensorboard_dir, enabled=self.rank == 0,
                                     resumed_step=self.step if self.resumed_from else None, cfg=cfg,
                                     resumed_from=self.resumed_from)
        if self.rank == 0:
            self._write_run_files()

    # ---- state --------------------------------------------------------------------------------------
    def _running_states(self) -> dict:
        return {"epoch": self.epoch, "sampler": self.sampler.state_dict(), "data_parallel_size": self.layout.dp_size,
                "config": json.loads(self.cfg.to_json()), "lora_base": self.lora_base,
                "loss_scale": self.loss_scale.state_dict(),
                "metrics": self.metrics.state_dict()}  # the W&B / MLflow run ids, on rank 0

    def _restore(self, path: str) -> None:
        states = self.checkpointer.load(path, self.model, self.optimizer, self.lr_scheduler)
        self.step, self.epoch = states["step"], states["epoch"]
        self.loss_scale.load_state_dict(states.get("loss_scale") or {})
        try:
            self.sampler.load_state_dict(states["sampler"])
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
        if self.rank == 0:
            note = "" if states["data_parallel_size"] == self.layout.dp_size else (
                f" (data-parallel size {states['data_parallel_size']} -> {self.layout.dp_size}: the remaining "
                "samples are re-split exactly)")
            print(f"resumed from {path} at step {self.step}, epoch {self.epoch}{note}", flush=True)

    def save(self) -> str:
        path = self.checkpointer.save(self.step, self.model, self.optimizer, self.lr_scheduler, self._running_states())
        self.last_saved = (self.step, path)
        if self.rank == 0:
            print(f"saved {path}", flush=True)
        return path

    def _write_run_files(self) -> None:
        os.makedirs(self.cfg.tensorboard_dir, exist_ok=True)
        with open(os.path.join(self.cfg.tensorboard_dir, "config.json"), "w", encoding="utf-8") as f:
            f.write(self.cfg.to_json())
        run_info = describe_plugin(self.plugin)
        run_info.update(world_size=dist.get_world_size(), data_parallel_size=self.layout.dp_size,
                        cpu_compat=compat.is_active(), autocast=str(self.autocast_dtype), num_params=self.num_params,
                        trainable_params=self.num_trainable, resumed_from=self.resumed_from, start_step=self.step)
        run_info["config"] = json.loads(self.cfg.to_json())  # the resolved config: file, flags and defaults
        with open(os.path.join(self.cfg.tensorboard_dir, "run_info.json"), "w", encoding="utf-8") as f:
            json.dump(run_info, f, indent=2)

    # ---- one step -----------------------------------------------------------------------------------
    def _global_sum(self, *values) -> list[float]:
        tensor = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device).reshape(()) for v in values])
        dist.all_reduce(tensor)
        return tensor.tolist()

    def train_step(self, data_iter) -> dict | None:
        """One optimizer step; None when the epoch has too few batches left for one."""
        cfg = self.cfg
        try:
            batches = [next(data_iter) for _ in range(cfg.accumulation_steps)]
        except StopIteration:
            return None
        start = time.perf_counter()
        self.attempts += 1
        faults.hang_if("hang", self.attempts)
        # Counted on the CPU batches: one all_reduce, no device sync. Tensor/pipeline replicas of one data
        # shard saw the same tokens, so they count once.
        replicas = dist.get_world_size() // self.layout.dp_size
        labels = sum(label_tokens(b["labels"]) for b in batches)
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        padding = sum(b["attention_mask"].numel() for b in batches) - real
        pairs = sum(attention_pairs(b["position_ids"], b["attention_mask"], self.within_documents) for b in batches)
        units = sum(self.task.units(b) for b in batches)  # what the step's loss is a mean over
        labels_total, tokens_total, padding_total, pairs_total, units_total = (
            v / replicas for v in self._global_sum(labels, real, padding, pairs, units))
        scale = self.layout.dp_size / max(units_total, 1.0)
        if self.layout.pipeline:
            # One execute_pipeline per optimizer step, its micro-batches being all the accumulation steps':
            # the pipeline bubble and the data-parallel gradient sync are paid once, not once per micro-step.
            batches = [join_batches(batches, self.dataloader.collate_fn.pad_id)]
        loss_sum = None
        for micro, batch in enumerate(batches):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            loss = self.micro_step.forward_backward(batch, scale, micro == len(batches) - 1, self.attempts)
            if loss is not None:
                loss_sum = loss if loss_sum is None else loss_sum + loss
        self.sampler.mark_consumed(cfg.batch_size * cfg.accumulation_steps)
        # One all_reduce decides for every rank: the step's loss (held by `loss_owner` ranks, once per data
        # shard), whether any rank's loss or gradients are not finite, and the task's and components' sums.
        owner = self.layout.loss_owner
        owned = loss_sum if (loss_sum is not None and owner) else torch.zeros((), device=self.device)
        grads_bad = ~step_guard.local_grads_finite(self.model, self.optimizer)
        parts = [self.task, *self.components]
        sums = [part.take_sums(owner) for part in parts]
        loss_total, bad, *totals = self._global_sum(owned, grads_bad, *(v for s in sums for v in s))
        loss_value = loss_total / self.layout.dp_size  # each rank's share carried the dp factor of the gradient mean
        loss_finite = math.isfinite(loss_value)
        skipped = bad > 0 or not loss_finite
        # fp16: gradients that overflow behind a finite loss are the scaler's business (it skips and backs off),
        # a bad step only once the scale is at its floor; read before the skip lowers it
        scale = self.loss_scale.value()
        scaler_may_skip = self.loss_scale.active and loss_finite and not self.loss_scale.at_minimum()
        lr = self.lr_scheduler.get_last_lr()[0]
        grad_norm = None
        if skipped:
            step_guard.skip_step(self.optimizer)
        else:
            grad_norm = self.clip()
            skipped = not step_guard.step_and_report(self.optimizer)  # an fp16 scaler may still skip on its own
            if grad_norm is None:
                grad_norm = grad_clip.norm_after_step(self.optimizer, scale)
        overflow = skipped and scaler_may_skip
        if skipped and not overflow:
            self.bad_steps += 1
        elif not skipped:
            self.bad_steps = 0
            self.lr_scheduler.step()
            self.step += 1
        self.optimizer.zero_grad()
        elapsed = time.perf_counter() - start
        tokens_per_second = tokens_total / elapsed
        record = {"step": self.step, "loss": loss_value, "lr": lr,
                  "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                  "tokens": int(round(tokens_total)), "label_tokens": int(round(labels_total)), "step_time": elapsed,
                  "tokens_per_second": tokens_per_second,
                  "padding_fraction": padding_total / max(1.0, tokens_total + padding_total), "skipped": skipped}
        if self.loss_scale.active:
            record.update(loss_scale=scale, overflow=overflow)
        for part, part_sums in zip(parts, sums):
            record.update(part.metrics(totals[:len(part_sums)], units_total, self.layout.dp_size))
            totals = totals[len(part_sums):]
        if self.peak_tflops:
            # attention counted as computed: per document in packed rows (sum of len^2), not over whole rows
            flops = training_flops(self.model_config, active_params(self.model_config, self.num_params), tokens_total,
                                   pairs_total)
            record["mfu"] = flops / elapsed / (self.peak_tflops * 1e12 * dist.get_world_size())
        return record

    # ---- the run ------------------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        from tqdm import tqdm

        cfg = self.cfg
        history = []
        last_step = self.total_steps if cfg.max_steps is None else min(cfg.max_steps, self.total_steps)
        bar = tqdm(total=last_step, initial=self.step, disable=self.rank != 0, desc="train", unit="step")
        try:  # closed however the loop ends, so that an error line starts a line of its own
            while self.step < last_step and self.epoch < cfg.num_epochs:
                self.sampler.set_epoch(self.epoch)
                data_iter = iter(self.dataloader)
                while self.step < last_step:
                    record = self.train_step(data_iter)
                    if record is None:
                        self.epoch += 1
                        break
                    record["epoch"] = self.epoch
                    history.append(record)
                    self.metrics.log(record)
                    if record.get("overflow"):
                        self._on_overflow(record)
                        continue
                    if record["skipped"]:
                        self._on_bad_step(record)
                        continue
                    bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_second']:.0f}")
                    bar.update()
                    self._evaluate(final=False)
                    if cfg.save_interval > 0 and self.step % cfg.save_interval == 0:
                        self.save()
        finally:
            bar.close()
        self._evaluate(final=True)
        if self.last_saved[0] != self.step:
            self.save()  # the final state, unless the last interval just saved it
        self.metrics.close()
        return history

    def _evaluate(self, final: bool) -> None:
        """Held-out figures every --eval_interval steps and at the end (eval/in_training.py)."""
        if self.evaluator and self.evaluator.due(self.step, final):
            record = self.evaluator.run(self.step, self.model, self.booster, self.plugin, self.device)
            self.metrics.log(record)

    def _on_overflow(self, record: dict) -> None:
        if self.rank == 0:
            print(f"fp16: step {self.step + 1} skipped by the loss scaler: gradients overflowed at loss scale "
                  f"{record['loss_scale']:g}; it now is {self.loss_scale.value():g}", flush=True)

    def _on_bad_step(self, record: dict) -> None:
        if self.rank == 0:
            print(f"warning: step {self.step + 1} skipped: loss {record['loss']}, grad norm {record['grad_norm']} "
                  f"({self.bad_steps} in a row)", flush=True)
        if self.bad_steps < self.cfg.max_bad_steps:
            return
        stopped = (f"{self.bad_steps} steps in a row had" if self.bad_steps > 1 else "a step had") + \
            " a NaN/inf loss or gradient" + ("" if self.bad_steps > 1 else " (--max_bad_steps 1)") + "; stopped."
        saved_step, saved_path = self.last_saved
        if saved_step == self.step:  # skipped steps change nothing: that checkpoint holds these very weights
            raise InputError(f"{stopped} The weights are those of {saved_path}; nothing new saved")
        bad = ~step_guard.local_weights_finite(self.model, self.optimizer)
        if self._global_sum(bad)[0] > 0:
            raise InputError(f"{stopped} The weights are not finite, so nothing is saved; the last good checkpoint "
                             f"is {saved_path or 'none (the run started from non-finite weights)'}")
        path = self.save()
        raise InputError(f"{stopped} Last good state saved to {path}")


# Trainers of this process, never freed: freeing DDP's reducer can deadlock in torch's gloo process group (the
# main thread, holding the GIL, joins the group's worker thread, which waits for the GIL to free a finished
# collective's tensors; seen with py-spy on runs that never exited). train.py leaves with os._exit instead.
_KEPT = []


def run(cfg: TrainConfig) -> list[dict]:
    trainer = Trainer(cfg)
    _KEPT.append(trainer)
    if trainer.rank == 0:
        print(f"plugin={cfg.plugin} ({describe_plugin(trainer.plugin)}) world={dist.get_world_size()} "
              f"dp={trainer.layout.dp_size} params={trainer.num_params:,} steps={trainer.total_steps} "
              f"cpu_compat={compat.is_active()}", flush=True)
    try:
        history = trainer.fit()
    finally:  # TensorBoard's buffered events too, when a run stops with an error (train.py exits with os._exit)
        trainer.metrics.close()
    if trainer.rank == 0:
        print(json.dumps({"final_loss": history[-1]["loss"] if history else None, "steps": trainer.step}), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return history
