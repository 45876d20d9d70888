"""The time model: FLOPs counted as train.py's MFU logging counts them, the bubble, recomputation, links."""

import pytest
from transformers import LlamaConfig

from colossal_hammer.model.build import NAMED_CONFIGS
from colossal_hammer.plan import report
from colossal_hammer.plan.cli import plan_dict
from colossal_hammer.plan.shapes import Shape
from colossal_hammer.plan.throughput import flops_per_token
from colossal_hammer.training.metrics import training_flops

BASE = ["--model_config", "llama2-13b", "--gpu", "h100-80g", "--max_length", "4096", "--tokens", "1e9"]


def test_flops_per_token_is_what_train_py_logs():
    config = LlamaConfig(**NAMED_CONFIGS["llama2-13b"])
    shape = Shape.from_dict(NAMED_CONFIGS["llama2-13b"])
    s = 4096
    # one row of s tokens attends over s*s pairs (no document mask)
    assert flops_per_token(shape, s) * s == pytest.approx(training_flops(config, shape.total(), s, s * s))


def test_recomputation_bubble_and_tensor_parallel_traffic():
    plain = plan_dict(BASE + ["--plugin", "zero2", "--batch_size", "1"])
    ckpt = plan_dict(BASE + ["--plugin", "zero2", "--batch_size", "1", "--use_grad_checkpoint"])
    assert ckpt["step_parts_s"]["compute"] == pytest.approx(plain["step_parts_s"]["compute"] * 4 / 3, rel=1e-3)
    pipe = plan_dict(BASE + ["--plugin", "3d", "--pp", "4", "--batch_size", "8"])
    assert pipe["pipeline_bubble"] == pytest.approx(3 / 11, abs=1e-4)
    nvlink = plan_dict(BASE + ["--plugin", "3d", "--tp", "2"])
    pcie = plan_dict(BASE[:2] + ["--gpu", "l40s-48g"] + BASE[4:] + ["--plugin", "3d", "--tp", "2"])
    assert 0 < nvlink["step_parts_s"]["tensor_parallel_comm"] < pcie["step_parts_s"]["tensor_parallel_comm"]
    assert plain["hours"] == pytest.approx(1e9 / (plain["tokens_per_s_per_gpu"] * 8) / 3600, rel=1e-2)


def test_mfu_flag_scales_the_compute():
    half = plan_dict(BASE + ["--plugin", "zero2", "--batch_size", "4", "--mfu", "0.25"])
    full = plan_dict(BASE + ["--plugin", "zero2", "--batch_size", "4", "--mfu", "0.5"])
    assert half["step_parts_s"]["compute"] == pytest.approx(2 * full["step_parts_s"]["compute"], rel=1e-3)


def test_tensor_parallel_group_across_nodes_is_priced_at_the_inter_node_link_and_warned():
    """--tp 8 on nodes of 4 GPUs: every layer's tp all-reduces cross the inter-node link (25 GB/s, not NVLink's
    450), and the plan says so in a warning line of the report and in its JSON."""
    flags = ["--model_config", "llama2-7b", "--gpu", "h100-80g", "--max_length", "4096", "--plugin", "3d",
             "--tp", "8", "--batch_size", "8", "--nodes", "2"]
    within = plan_dict(flags + ["--gpus_per_node", "8"])
    across = plan_dict(flags + ["--gpus_per_node", "4"])
    assert within["warnings"] == [] and not any(line.startswith("warning:") for line in report.text(within).splitlines())
    assert across["step_parts_s"]["tensor_parallel_comm"] == pytest.approx(
        within["step_parts_s"]["tensor_parallel_comm"] * 450 / 25, rel=1e-2)
    (warning,) = across["warnings"]
    assert "--tp 8" in warning and "--gpus_per_node 4" in warning and "spans nodes" in warning
    assert f"warning: {warning}" in report.text(across).splitlines()
