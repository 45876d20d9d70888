"""The planner's per-part memory of a small model against independent counts: the real model's parameter
bytes, and optimizer state bytes measured after one real AdamW step on CPU."""

import json

import pytest
import torch

from colossal_hammer.model.build import NAMED_CONFIGS, build_model
from colossal_hammer.plan import memory
from colossal_hammer.plan.config import parse
from colossal_hammer.plan.devices import resolve
from colossal_hammer.plan.layout import gemini_chunks, layout_of, stages
from colossal_hammer.rules import vocab_multiple
from colossal_hammer.plan.shapes import Shape, load_shape

GQA_BIAS = dict(hidden_size=96, intermediate_size=200, num_hidden_layers=3, num_attention_heads=6,
                num_key_value_heads=2, vocab_size=1000, attention_bias=True, mlp_bias=True)


def plan_memory(*flags, gpus=2):
    cfg = parse(["--model_config", "small", "--gpu", "a100-80g", "--gpus_per_node", str(gpus), "--nodes", "1",
                 "--max_length", "256", "--fragmentation", "0", *flags])
    device = resolve(cfg.gpu, None, None)
    return cfg, memory.estimate(cfg, load_shape(cfg), device, gpus, gpus, 0.0).device


def real_model(name="small", vocab_multiple=1):
    return build_model(None, name, seed=0, vocab_multiple=vocab_multiple)


def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("spec", ["tiny", "small", "gqa_bias"])
def test_parameter_counts_match_the_built_model(spec, tmp_path):
    if spec == "gqa_bias":
        path = tmp_path / "cfg.json"
        path.write_text(json.dumps(GQA_BIAS))
        spec, raw = str(path), GQA_BIAS
    else:
        raw = NAMED_CONFIGS[spec]
    model = real_model(spec)
    shape = Shape.from_dict(raw)
    assert shape.total() == sum(p.numel() for p in model.parameters())
    assert shape.tensor_sizes() == [p.numel() for p in model.parameters()]


def test_presets_have_the_published_parameter_counts():
    counts = {name: Shape.from_dict(NAMED_CONFIGS[name]).total() for name in
              ("llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b")}
    assert counts == {"llama2-7b": 6738415616, "llama2-13b": 13015864320, "llama2-70b": 68976648192,
                      "llama3-8b": 8030261248, "llama3-70b": 70553706496}


def one_adamw_step(params):
    """Bytes of AdamW's state tensors after one real step over `params` (the moments; not the step counters)."""
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    optimizer.step()
    return sum(nbytes([s["exp_avg"], s["exp_avg_sq"]]) for s in optimizer.state.values())


def test_ddp_fp32_parts_are_the_models_own_bytes():
    model = real_model()
    params = list(model.parameters())
    model(torch.randint(0, 4096, (1, 16)), labels=torch.randint(0, 4096, (1, 16))).loss.backward()
    _, parts = plan_memory("--plugin", "ddp", "--mixed_precision", "fp32")
    assert parts["parameters"] == nbytes(params)
    assert parts["gradients"] == nbytes([p.grad for p in params])  # param.grad is a view into DDP's buckets
    assert parts["optimizer"] == one_adamw_step(params)
    assert parts["step_buffers"] == 0


def test_ddp_bf16_adds_the_autocast_copies():
    params = list(real_model().parameters())
    _, parts = plan_memory("--plugin", "ddp", "--mixed_precision", "bf16")
    assert parts["parameters"] == nbytes(params) + nbytes([p.to(torch.bfloat16) for p in params])


def test_lora_trains_only_what_peft_makes_trainable():
    """--lora_rank: the model is the base plus peft's adapters and modules_to_save copies; gradients and
    Adam states exist for the trainable part alone (counted on the peft model, one real AdamW step)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(real_model(), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                                    modules_to_save=["lm_head"]))
    everything = list(model.parameters())
    trainable = [p for p in everything if p.requires_grad]
    flags = ("--plugin", "ddp", "--mixed_precision", "fp32", "--lora_rank", "8", "--lora_target_modules",
             "q_proj,v_proj,down_proj", "--lora_modules_to_save", "lm_head")
    _, parts = plan_memory(*flags)
    assert parts["parameters"] == nbytes(everything)
    assert parts["gradients"] == nbytes(trainable)
    assert parts["optimizer"] == one_adamw_step(trainable)
    # and the plugins LoRA does not run on are refused, in the planner as in train.py
    from colossal_hammer.errors import InputError

    with pytest.raises(InputError, match="LoRA runs on ddp, zero2, zero2_cpu"):
        from colossal_hammer.plan.cli import plan_dict
        plan_dict(["--model_config", "small", "--gpu", "a100-80g", "--plugin", "gemini", "--lora_rank", "8"])


@pytest.mark.parametrize("plugin", ["zero2", "zero2_cpu"])
def test_zero2_partitions_master_and_moments_over_dp(plugin):
    dp = 4
    params = [p.detach() for p in real_model().parameters()]
    working = [p.to(torch.bfloat16) for p in params]
    # what each rank of LowLevelZero holds: a 1/dp slice of every parameter as fp32 master, and its moments
    masters = [p.float().reshape(-1).chunk(dp)[0].clone() for p in params]
    measured = nbytes(masters) + one_adamw_step(masters)
    cfg, parts = plan_memory("--plugin", plugin, gpus=dp)
    assert parts["parameters"] == nbytes(working)
    device_optimizer = 0 if plugin == "zero2_cpu" else parts["optimizer"]
    if plugin == "zero2":
        assert device_optimizer == pytest.approx(measured, rel=2e-3)
    else:
        lay = layout_of(cfg, dp)
        host = memory._states(cfg, load_shape(cfg), lay, sum(p.numel() for p in params))[3]
        assert parts["optimizer"] == 0 and host == pytest.approx(measured, rel=2e-3)
    # bf16 gradients partitioned over dp, plus the reduce bucket (the whole small model fits in it)
    assert parts["gradients"] == pytest.approx(nbytes(working) / dp + nbytes(working), rel=1e-9)


def test_gemini_chunks_reproduce_the_measured_real_shape_layout():
    # README/DESIGN: bench/gemini_real_shape.py (hidden 1024, 24 layers, vocab 32000, dp 2) measured 8 of 8
    # chunks sharded and 205.6M of 373.9M working elements per rank (run_info.json gemini_layout)
    shape = Shape.from_dict(dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
                                 num_attention_heads=16, num_key_value_heads=16, vocab_size=32000))
    chunks = gemini_chunks(tuple(shape.tensor_sizes()), 2)
    assert (chunks.count, chunks.keep_gathered) == (8, False)
    assert round(chunks.total / 2 / 1e6, 1) == 205.6


def test_gemini_chunk_search_agrees_with_colossalai():
    from colossalai.zero.gemini.chunk.search_utils import _get_unused_byte

    from colossal_hammer.plan.layout import _unused
    import numpy as np

    sizes = Shape.from_dict(NAMED_CONFIGS["llama2-7b"]).tensor_sizes()[1:-1]
    sizes_to_try = np.array([45088768, 45088768 + 1024 * 7, 67108864], dtype=np.int64)
    assert list(_unused(sizes, sizes_to_try)) == [_get_unused_byte(sizes, int(c)) for c in sizes_to_try]


def test_gemini_small_model_stays_whole_and_optimizer_is_measured():
    params = [p.detach() for p in real_model().parameters()]
    _, parts = plan_memory("--plugin", "gemini")
    # below 32 Mi elements: one chunk every rank holds whole (bf16 weights, fp32 masters, moments)
    assert parts["parameters"] == nbytes([p.to(torch.bfloat16) for p in params])
    masters = [p.float().clone() for p in params]
    assert parts["optimizer"] == nbytes(masters) + one_adamw_step(masters)


def test_3d_tp_pads_the_vocabulary_and_splits_what_the_shardformer_splits():
    cfg, parts = plan_memory("--plugin", "3d", "--tp", "2", gpus=2)
    model = real_model(vocab_multiple=vocab_multiple(cfg))  # the padded model train.py builds for tp 2
    shape = load_shape(cfg)
    assert shape.total(vocab_multiple(cfg)) == sum(p.numel() for p in model.parameters())
    split = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2)  # linears and vocabulary
    whole = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 1)  # norms
    (stage,) = stages(shape, 1)
    assert stage.elements(shape, 2, vocab_multiple(cfg)) == split // 2 + whole
    assert parts["parameters"] == 2 * (split // 2 + whole)  # bf16


def test_3d_pipeline_stages_cover_the_model_once():
    cfg, _ = plan_memory("--plugin", "3d", "--pp", "2", "--batch_size", "2", gpus=2)
    shape = load_shape(cfg)
    total = sum(s.elements(shape, 1, 64) for s in stages(shape, 2))
    assert total == shape.total(64)


def test_activations_follow_korthikanti():
    s, b, h, a, layers = 256, 2, 256, 8, 4
    cfg, parts = plan_memory("--plugin", "zero2")
    # train.py runs SDPA: its fused kernels keep no s x s scores, so the 5as/h term is not counted
    assert parts["activations"] == layers * s * b * h * 34
    _, ckpt = plan_memory("--plugin", "zero2", "--use_grad_checkpoint")
    assert ckpt["activations"] == layers * 2 * s * b * h + s * b * h * 34
    _, tp = plan_memory("--plugin", "3d", "--tp", "2", gpus=2)
    assert tp["activations"] == layers * s * b * h * (10 + 24 / 2)
    # sequence parallelism over tp runs eager attention (components.attention_implementation): scores kept
    _, sp = plan_memory("--plugin", "3d", "--tp", "2", "--enable_sequence_parallelism", gpus=2)
    assert sp["activations"] == layers * s * b * h * (34 + 5 * a * s / h) / 2
    _, flash = plan_memory("--plugin", "3d", "--tp", "2", "--enable_sequence_parallelism", "--use_flash_attn", gpus=2)
    assert flash["activations"] == layers * s * b * h * 34 / 2
    _, fp32 = plan_memory("--plugin", "zero2", "--mixed_precision", "fp32")
    assert fp32["activations"] == 2 * parts["activations"]
    # logits: 16-bit output, its fp32 copy and the fp32 log-softmax; vocabulary split over tp under 3d
    assert parts["logits"] == 4096 * s * b * 10
    assert tp["logits"] == 4096 // 2 * s * b * 10


def test_fragmentation_is_a_margin_on_the_rest():
    cfg = parse(["--model_config", "small", "--gpu", "a100-80g", "--plugin", "zero2"])
    device = resolve("a100-80g", None, None)
    plain = memory.estimate(cfg, load_shape(cfg), device, 8, 8, 0.0).device
    margin = memory.estimate(cfg, load_shape(cfg), device, 8, 8, 0.1).device
    assert margin["total"] == pytest.approx(plain["total"] * 1.1)
