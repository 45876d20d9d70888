"""Bytes per device, by part, as each plugin places them; and host memory per node.

Parts of one device (the pipeline stage that needs most, when pp > 1):
  parameters    working weights (+ Gemini's gathered chunks, + DDP's bf16 autocast copies)
  gradients     as the plugin keeps them between backward and step (+ ZeRO's reduce bucket; DDP's param.grad
                are views into its buckets)
  optimizer     fp32 master weights and the two Adam moments held on the device
  activations   Korthikanti et al. (2022): s*b*h*(34 + 5*a*s/h) bytes per layer in 16-bit, split by tp with
                sequence parallelism (10 + 24/t without), by the all_to_all sp size; the 5*a*s/h term (the
                stored attention scores) only under eager attention: flash and SDPA's fused kernels
                recompute them; full recomputation keeps 2*s*b*h per layer plus one layer being recomputed;
                pp: stage k holds min(pp - k, micro-batches) micro-batches in flight (1F1B)
  logits        the last stage's output: 16-bit logits, their fp32 copy and the fp32 log-softmax the
                cross-entropy keeps for backward, V*s*b*(2+4+4) bytes (V split over tp under plugin 3d)
  step_buffers  fp32 copies of gradients made in the optimizer step (activations are gone by then)
  runtime       CUDA context and libraries (or a CPU rank's interpreter)
  fragmentation a margin on all of the above (allocator caching and fragmentation)
The peak is the static parts + max(activations + logits, step_buffers) + runtime, times 1 + margin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from ..adapters.lora import module_names
from ..rules import vocab_multiple
from .devices import Device
from .layout import GEMINI_GATHERED_CHUNKS, ZERO_BUCKET_ELEMENTS, Layout, gemini_chunks, layout_of, stages
from .shapes import Shape

GiB = 2**30
PARTS = ("parameters", "gradients", "optimizer", "activations", "logits", "step_buffers", "runtime",
         "fragmentation")
LAZY_PLUGINS = ("gemini", "gemini_auto", "3d")  # build under LazyInitContext: a rank materialises its shard


@dataclass
class Memory:
    device: Dict[str, float]  # bytes per part on the worst device, with "total"
    host: Dict[str, float]  # bytes per node, by part, with "total"
    stage: int  # pipeline stage of `device`
    notes: List[str] = field(default_factory=list)


def stores_scores(cfg) -> bool:
    """Whether attention keeps its s x s scores for backward: only eager attention does. train.py runs SDPA
    (fused kernels that recompute them) unless plugin 3d's sequence parallelism needs eager attention
    (training.components.attention_implementation); flash attention never keeps them."""
    return not cfg.use_flash_attn and cfg.plugin == "3d" and cfg.enable_sequence_parallelism


def activation_bytes(cfg, shape: Shape, lay: Layout, micro_batch: int, layers: int, in_flight: int) -> float:
    s, b, h, t = cfg.max_length, micro_batch, shape.hidden, lay.tp
    attention = 5.0 * shape.heads * s / h if stores_scores(cfg) else 0.0
    if t > 1 and lay.seq_split_tp:
        per_layer = s * b * h * (34.0 + attention) / t
    elif t > 1:
        per_layer = s * b * h * (10.0 + (24.0 + attention) / t)
    else:
        per_layer = s * b * h * (34.0 + attention)
    per_layer /= lay.sp
    kept = 2.0 * s * b * h / (t if lay.seq_split_tp else 1) / lay.sp
    scale = 2.0 if cfg.mixed_precision == "fp32" else 1.0  # the formula counts 16-bit activations
    if cfg.use_grad_checkpoint:
        return scale * (layers * kept * in_flight + per_layer)
    return scale * layers * per_layer * in_flight


def logits_bytes(cfg, shape: Shape, lay: Layout, micro_batch: int) -> float:
    vocab = shape.padded_vocab(vocab_multiple(cfg)) // lay.tp
    per_element = 8.0 + (0.0 if cfg.mixed_precision == "fp32" else 2.0)
    return vocab * cfg.max_length * micro_batch * per_element / lay.sp


def _states(cfg, shape: Shape, lay: Layout, elements: int) -> tuple:
    """(parameters, gradients, optimizer on device, optimizer on host, step buffers on device, step on host,
    notes) in bytes for one device holding `elements` parameter elements."""
    w = 2.0 if cfg.mixed_precision in ("fp16", "bf16") else 4.0
    half = w == 2.0
    notes = []
    trained = elements  # elements with gradients and optimizer states
    if getattr(cfg, "lora_rank", 0):  # ddp / zero2 / zero2_cpu only (search.shape_problem): the whole model
        adapters, copies = shape.lora_elements(cfg.lora_rank, module_names(cfg.lora_target_modules),
                                               module_names(cfg.lora_modules_to_save))
        elements, trained = elements + adapters + copies, adapters + copies
        notes.append(f"lora: {trained / 1e6:.1f}M trained elements (adapters {adapters / 1e6:.1f}M, "
                     f"modules_to_save copies {copies / 1e6:.1f}M); the base is frozen: no gradients or optimizer")
    if cfg.plugin == "ddp":
        params = 4.0 * elements
        if half:
            params += 2.0 * elements
            notes.append("ddp: fp32 weights, plus the 16-bit copies autocast keeps for backward")
        # training.plugins builds DDP with gradient_as_bucket_view: param.grad lives in the reducer's buckets
        return params, 4.0 * trained, 8.0 * trained, 0.0, 0.0, 0.0, notes
    if cfg.plugin in ("zero2", "zero2_cpu"):
        shard = trained / lay.dp
        grads = w * shard + w * min(ZERO_BUCKET_ELEMENTS, trained)
        master = 12.0 * shard  # fp32 master + two moments, partitioned over dp
        step = 4.0 * shard
        if cfg.plugin == "zero2_cpu":
            notes.append("zero2_cpu: fp32 master, Adam moments and the step's fp32 gradients in host memory")
            return w * elements, grads, 0.0, master, 0.0, step, notes
        return w * elements, grads, master, 0.0, step, 0.0, notes
    if cfg.plugin.startswith("gemini"):
        chunks = gemini_chunks(tuple(shape.tensor_sizes()), lay.dp)
        held = chunks.total if chunks.keep_gathered else chunks.total / lay.dp
        gathered = 0.0 if chunks.keep_gathered else GEMINI_GATHERED_CHUNKS * chunks.chunk_size * w
        grads = w * held if cfg.accumulation_steps > 1 else 0.0
        notes.append(f"gemini: {chunks.count} chunks of {chunks.chunk_size / 2**20:.1f} Mi elements "
                     f"({(chunks.total - elements) / 2**20:.1f} Mi padding), "
                     + ("kept whole on every rank (below 32 Mi elements)" if chunks.keep_gathered
                        else f"sharded over {lay.dp}; gradients "
                             + ("in their own chunks (accumulation)" if grads else "reuse the weights' chunks")))
        moments = 8.0 * (elements if chunks.keep_gathered else elements / lay.dp)
        return w * held + gathered, grads, 4.0 * held + moments, 0.0, 0.0, 0.0, notes
    # plugin 3d: mixed precision keeps fp32 masters; ZeRO 1/2 partitions them (and 2 the gradients)
    z = lay.zero_group if cfg.zero_stage > 0 else 1
    master = (4.0 if half else 0.0) * elements / z
    moments = 8.0 * elements / z
    grads = w * elements / (z if cfg.zero_stage == 2 else 1)
    if cfg.zero_stage == 0 and lay.pp == 1 and lay.dp > 1:
        grads *= 2  # HybridParallelModule wraps the model in torch DDP: its buckets copy the gradients
        notes.append("3d: zero_stage 0 with dp > 1 runs torch DDP: gradients twice (param.grad and buckets)")
    step = (4.0 if half else 0.0) * elements / z
    if cfg.zero_stage > 0 and cfg.zero_cpu_offload:
        notes.append("3d: ZeRO optimizer states offloaded to host memory")
        return w * elements, grads, 0.0, master + moments, 0.0, step, notes
    return w * elements, grads, master + moments, 0.0, step, 0.0, notes


def estimate(cfg, shape: Shape, device: Device, world: int, gpus_per_node: int, margin: float) -> Memory:
    lay = layout_of(cfg, world)
    multiple = vocab_multiple(cfg)
    micro = cfg.microbatch_size if lay.pp > 1 else cfg.batch_size
    micro_batches = cfg.batch_size // micro if lay.pp > 1 else 1
    best = None
    for stage in stages(shape, lay.pp):
        elements = stage.elements(shape, lay.tp, multiple)
        params, grads, optim, optim_host, step, step_host, notes = _states(cfg, shape, lay, elements)
        in_flight = min(lay.pp - stage.index, micro_batches)
        acts = activation_bytes(cfg, shape, lay, micro, stage.layers, in_flight)
        logits = logits_bytes(cfg, shape, lay, micro) if stage.last else 0.0
        parts = dict(parameters=params, gradients=grads, optimizer=optim, activations=acts, logits=logits,
                     step_buffers=step, runtime=device.runtime_gib * GiB)
        peak = params + grads + optim + max(acts + logits, step) + parts["runtime"]
        parts["fragmentation"] = margin * peak
        parts["total"] = peak + parts["fragmentation"]
        if best is None or parts["total"] > best[0]["total"]:
            best = (parts, stage, elements, optim_host + step_host, notes)
    parts, stage, elements, offloaded, notes = best
    host = _host(cfg, shape, device, lay, gpus_per_node, offloaded, elements)
    if lay.pp > 1:
        notes = notes + [f"pp: stage {stage.index} of {lay.pp} needs most ({stage.layers} layers"
                         f"{', embedding' if stage.first else ''}{', lm_head and logits' if stage.last else ''})"]
    return Memory(parts, host, stage.index, notes)


def _host(cfg, shape: Shape, device: Device, lay: Layout, ranks: int, offloaded: float, elements: int) -> dict:
    """Host memory of one node: its ranks' processes, the model as it is loaded, offloaded optimizer states."""
    if cfg.model_config is not None:
        # build_model creates a config-built model in fp32, whole, on every rank (same weights for every plugin)
        load = 4.0 * shape.total(vocab_multiple(cfg))
    elif cfg.plugin in LAZY_PLUGINS:  # each rank materialises its own shard only
        load = (2.0 if cfg.mixed_precision != "fp32" else 4.0) * elements / (lay.dp if cfg.plugin != "3d" else 1)
    else:
        load = (2.0 if cfg.mixed_precision != "fp32" else 4.0) * shape.total()
    parts = dict(runtime=device.host_runtime_gib * GiB * ranks, model_load=load * ranks, offload=offloaded * ranks)
    # The loaded copy is freed once the plugin has placed the model, before the offloaded states grow.
    parts["total"] = parts["runtime"] + max(parts["model_load"], parts["offload"])
    return parts
