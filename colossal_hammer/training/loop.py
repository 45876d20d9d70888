"""The training loop: one Trainer for every Booster plugin.

Plugins differ only in what `plugins` decides once, from the plugin object: how a step runs (plain
forward/backward, or `execute_pipeline` under pipeline parallelism), which ranks hold a loss that
counts towards the data-parallel mean, and whether micro-steps may skip the gradient all-reduce
(`parallel_layout_of`); and what the loop does itself because the plugin does not: autocast, loss scaling,
clipping, lazy init (`precision_plan`). How a non-finite step is skipped is `step_guard`'s.
A run's position is (epoch, step, sampler state, RNG); a checkpoint holds all of it, so a resumed run
continues exactly where the saved one stood.

A step's loss is the mean over every label token of the step: all micro-steps, all data-parallel ranks.
Each micro-batch's mean loss is weighted by its share of those tokens (times the data-parallel size the
plugin divides gradients by), so 5 label tokens never weigh as much as 2,000. Under `--task dpo` the unit
is the pair instead of the label token, and the forward and loss are the DPOTask's (dpo.py).
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

from .. import compat
from ..model.build import DTYPES, mask_padded_logits, unpadded_vocab_size
from ..adapters import lora
from ..model.neftune import NEFTune
from ..data.loader import join_batches
from ..data.packing import IGNORE_INDEX
from ..errors import InputError
from ..eval import in_training
from . import faults, preflight, step_guard
from .checkpoint import Checkpointer
from ..model.doc_attention import attention_pairs
from .components import (attention_implementation, document_attention, eval_tokenizer, make_data, make_model,
                         make_optimizer, model_config_of, tokenizer_folder, weights_source)
from .config import TrainConfig
from .dpo import DPOTask
from .metrics import MetricsLogger, peak_tflops, training_flops
from ..moe import grad_norm as moe_grad_norm
from ..moe import router as moe_router
from ..model.moe_configs import active_params
from .plugins import build_plugin, describe_plugin, parallel_layout_of, precision_plan
from .schedule import cosine_with_warmup, default_warmup_steps


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        compat.activate()
        import colossalai
        from colossalai.accelerator import get_accelerator
        from colossalai.booster import Booster
        from colossalai.lazy import LazyInitContext

        colossalai.launch_from_torch(seed=cfg.seed, verbose=False)
        self.device = get_accelerator().get_current_device()
        self.rank = dist.get_rank()
        hf_config = model_config_of(cfg)  # read once: the plugin checks it, preflight takes its vocabulary
        self.plugin = build_plugin(cfg, hf_config)
        self.layout = parallel_layout_of(self.plugin)
        precision = precision_plan(self.plugin, cfg, self.device.type)
        if cfg.use_flash_attn and attention_implementation(cfg) != "flash_attention_2" and self.rank == 0:
            print("warning: --use_flash_attn needs a GPU and the flash-attn package (pip install .[gpu]); using "
                  "SDPA, which masks packed rows per document", flush=True)
        self.autocast_dtype = DTYPES[precision.autocast] if precision.autocast else None
        self.booster = Booster(plugin=self.plugin, mixed_precision=precision.booster_precision)
        lora.check(cfg, self.device.type == "cuda")
        self.clip_here = precision.clip_in_loop
        start = preflight.agreed(lambda: preflight.before_start(
            cfg, unpadded_vocab_size(hf_config), eval_tokenizer(cfg),
            lora_base=weights_source(cfg)[0] if lora.enabled(cfg) else None))
        self.lora_base = start["lora_base"]

        lazy = LazyInitContext(default_device=self.device) if precision.lazy_init else None
        model = make_model(cfg, DTYPES[precision.model_dtype], lazy)
        if lora.enabled(cfg):
            model = lora.apply(self.booster, model, cfg)
        self.num_params = sum(p.numel() for p in model.parameters())
        self.num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.model_config = model.config
        self.within_documents = document_attention(cfg).within_documents
        self.peak_tflops = peak_tflops(cfg.peak_tflops, self.device)
        preflight.agreed(lambda: preflight.check_free_space(cfg.save_dir, self.num_params))

        self.dataset, self.sampler, self.dataloader = make_data(
            cfg, unpadded_vocab_size(model.config), self.layout.dp_size, self.layout.dp_rank)
        samples_per_rank = len(self.sampler.global_order(0)) // self.layout.dp_size
        self.steps_per_epoch = samples_per_rank // (cfg.batch_size * cfg.accumulation_steps)
        if self.steps_per_epoch == 0:
            raise InputError(
                f"{len(self.dataset)} samples give no optimizer step at batch_size {cfg.batch_size} x "
                f"accumulation {cfg.accumulation_steps} x data-parallel {self.layout.dp_size}")
        self.total_steps = cfg.num_epochs * self.steps_per_epoch
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else default_warmup_steps(self.total_steps)
        optimizer = make_optimizer(cfg, model)
        scheduler = cosine_with_warmup(optimizer, self.total_steps, warmup)
        self.model, self.optimizer, _, _, self.lr_scheduler = self.booster.boost(
            model=model, optimizer=optimizer, lr_scheduler=scheduler)
        unwrapped = lora.inner_model(self.model)
        tp_group = getattr(self.plugin, "tp_group", None)
        mask_padded_logits(unwrapped, dist.get_rank(tp_group) if tp_group is not None else 0)
        self.neftune = NEFTune(unwrapped.get_input_embeddings(), cfg.neft_alpha) if cfg.use_neft else None
        self.router = moe_router.build(cfg, unwrapped)  # MoE models: the router's loss terms and load figures
        self.evaluator = in_training.build(cfg, self.layout, model.config.vocab_size, eval_tokenizer(cfg))

        self.step = 0
        self.epoch = 0
        self.bad_steps = 0
        self.attempts = 0  # train_step calls in this process, skipped ones included
        self.last_saved = (None, None)  # (step, folder) of the newest checkpoint that holds this run's weights
        self.checkpointer = Checkpointer(self.booster, cfg.save_dir, cfg.keep_last,
                                         tokenizer_folder(weights_source(cfg)[0]), start["chat_template"],
                                         shard_size_mb=cfg.checkpoint_shard_size,
                                         adapter_base=self.lora_base,
                                         per_rank_optimizer=cfg.plugin != "ddp" and cfg.optimizer_checkpoint == "per_rank")
        self.resumed_from = start["resume_from"]
        self.task = DPOTask(self) if cfg.task == "dpo" else None
        if self.task:
            self.task.start(self.resumed_from)  # before _restore: the reference is the starting weights
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
                "metrics": self.metrics.state_dict()}  # the W&B / MLflow run ids, on rank 0

    def _restore(self, path: str) -> None:
        states = self.checkpointer.load(path, self.model, self.optimizer, self.lr_scheduler)
        self.step, self.epoch = states["step"], states["epoch"]
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
    def _forward_backward(self, batch: dict, scale: float, last_micro: bool) -> torch.Tensor | None:
        """Forward and backward of one micro-batch, its mean loss weighted by `scale` per label token."""
        if self.neftune:
            self.neftune.set_lengths(batch["attention_mask"].sum(1))
        if self.layout.pipeline:
            # The schedule divides each pipeline micro-batch's loss by their number; undo that, weight by tokens.
            per_token = scale * (batch["input_ids"].shape[0] // self.cfg.microbatch_size)

            def criterion(outputs, inputs):
                count = label_tokens(inputs["labels"])
                # no label token in this micro-batch: its mean loss is 0/0; a zero that still reaches every weight
                loss = outputs.loss * (count * per_token) if count else outputs.logits.sum() * 0.0
                return faults.corrupt_loss(loss, self.attempts)

            out = self.booster.execute_pipeline(iter([batch]), self.model, criterion=criterion,
                                                optimizer=self.optimizer, return_loss=True)
            return out["loss"].detach() if out["loss"] is not None else None
        weight = label_tokens(batch["labels"]) * scale
        if weight == 0:  # no label token: an all-ignored mean is NaN, so predict one token with weight 0
            batch["labels"][0, -1] = batch["input_ids"][0, -1]
        skip_sync = not last_micro and self.layout.grad_accumulation == "no_sync"
        sync_ctx = self.booster.no_sync(self.model, self.optimizer) if skip_sync else nullcontext()
        amp_ctx = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with sync_ctx:
            with amp_ctx:
                loss = faults.corrupt_loss(self.model(**batch).loss * weight, self.attempts)
                # MoE: the router's terms are optimised with the LM loss; the log reports them apart
                optimised = loss + self.router.loss(batch["attention_mask"], weight) if self.router else loss
            self.booster.backward(optimised, self.optimizer)
        return loss.detach()

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
        units = self.task.units(batches) if self.task else labels  # what the step's loss is a mean over
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
            forward_backward = self.task.forward_backward if self.task else self._forward_backward
            loss = forward_backward(batch, scale, last_micro=micro == len(batches) - 1)
            if loss is not None:
                loss_sum = loss if loss_sum is None else loss_sum + loss
        self.sampler.mark_consumed(cfg.batch_size * cfg.accumulation_steps)
        # One all_reduce decides for every rank: the step's loss (held by `loss_owner` ranks, once per data
        # shard) and whether any rank's loss or gradients are not finite.
        owned = loss_sum if (loss_sum is not None and self.layout.loss_owner) else torch.zeros((), device=self.device)
        grads_bad = ~step_guard.local_grads_finite(self.model, self.optimizer)
        task_sums = self.task.take_sums() if self.task else []
        router_sums = self.router.take_sums(self.layout.loss_owner) if self.router else []
        loss_total, bad, *totals = self._global_sum(owned, grads_bad, *task_sums, *router_sums)
        task_totals, router_totals = totals[:len(task_sums)], totals[len(task_sums):]
        loss_value = loss_total / self.layout.dp_size  # each rank's share carried the dp factor of the gradient mean
        skipped = bad > 0 or not math.isfinite(loss_value)
        lr = self.lr_scheduler.get_last_lr()[0]
        grad_norm = None
        if skipped:
            step_guard.skip_step(self.optimizer)
        else:
            grad_norm = self._norm_and_clip()
            skipped = not step_guard.step_and_report(self.optimizer)  # an fp16 scaler may still skip on its own
            if grad_norm is None:
                grad_norm = self._grad_norm_from_optimizer()
        if skipped:
            self.bad_steps += 1
        else:
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
        if self.task:
            record.update(self.task.metrics(task_totals, units_total))
        if self.router:
            record.update(self.router.metrics(router_totals, self.layout.dp_size))
        if self.peak_tflops:
            # attention counted as computed: per document in packed rows (sum of len^2), not over whole rows
            flops = training_flops(self.model_config, active_params(self.model_config, self.num_params), tokens_total,
                                   pairs_total)
            record["mfu"] = flops / elapsed / (self.peak_tflops * 1e12 * dist.get_world_size())
        return record

    def _norm_and_clip(self):
        """The gradient norm where the loop takes it, clipping by it (None: the optimizer clips inside step): ddp
        through torch's utility; --plugin moe by moe/grad_norm.py, since Colossal-AI's norm is wrong there."""
        if self.cfg.plugin == "moe":
            scale = float(getattr(step_guard.mixin_of(self.optimizer), "loss_scale", 1.0))
            return moe_grad_norm.norm_and_clip(self.model, self.optimizer, self.cfg.grad_clip, self.plugin.tp_size,
                                               self.layout.dp_size, self.device, scale)
        return self.optimizer.clip_grad_by_norm(self.cfg.grad_clip) if self.clip_here else None

    def _grad_norm_from_optimizer(self):
        try:
            return self.optimizer.get_grad_norm()
        except NotImplementedError:
            return None

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

    def _on_bad_step(self, record: dict) -> None:
        if self.rank == 0:
            print(f"warning: step {self.step + 1} skipped: loss {record['loss']}, grad norm {record['grad_norm']} "
                  f"({self.bad_steps} in a row)", flush=True)
        if self.bad_steps < self.cfg.max_bad_steps:
            return
        stopped = f"{self.bad_steps} steps in a row had a NaN/inf loss or gradient; stopped."
        saved_step, saved_path = self.last_saved
        if saved_step == self.step:  # skipped steps change nothing: that checkpoint holds these very weights
            raise InputError(f"{stopped} The weights are those of {saved_path}; nothing new saved")
        bad = ~step_guard.local_weights_finite(self.model, self.optimizer)
        if self._global_sum(bad)[0] > 0:
            raise InputError(f"{stopped} The weights are not finite, so nothing is saved; the last good checkpoint "
                             f"is {saved_path or 'none (the run started from non-finite weights)'}")
        path = self.save()
        raise InputError(f"{stopped} Last good state saved to {path}")


def label_tokens(labels: torch.Tensor) -> int:
    """Tokens the loss predicts: label positions after the first that are not ignored."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


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
