"""Every plugin that runs on CPU trains the same tiny Llama, from the same seed and data, to DDP's losses.

Each run is 2 real processes over gloo. Global batch is 2 samples per step everywhere: data-parallel
plugins take 1 per rank, tp=2 / pp=2 (one data-parallel replica) take 2 on their single replica.
"""

import pytest

from tests.distributed import TINY, train

STEPS = ["--max_steps", "3"]
FP32_TOL = 1e-3
BF16_TOL = 2e-2

# name -> (flags, expected facts read back from the plugin object)
FP32_PLUGINS = {
    "zero2": (["--plugin", "zero2", "--batch_size", "1"],
              {"plugin_class": "LowLevelZeroPlugin", "zero_stage": 2, "cpu_offload": False}),
    "zero2_cpu": (["--plugin", "zero2_cpu", "--batch_size", "1"],
                  {"plugin_class": "LowLevelZeroPlugin", "zero_stage": 2, "cpu_offload": True}),
    "3d_tp2": (["--plugin", "3d", "--tp", "2", "--batch_size", "2"],
               {"plugin_class": "HybridParallelPlugin", "tp_size": 2, "pp_size": 1, "dp_size": 1}),
    "3d_pp2": (["--plugin", "3d", "--pp", "2", "--batch_size", "2", "--microbatch_size", "1"],
               {"plugin_class": "HybridParallelPlugin", "tp_size": 1, "pp_size": 2, "dp_size": 1}),
}
# Gemini and ZeRO inside the hybrid plugin refuse fp32, so they are compared in bf16.
BF16_PLUGINS = {
    "gemini": (["--plugin", "gemini", "--batch_size", "1"],
               {"plugin_class": "GeminiPlugin", "placement_policy": "static", "precision": "bfloat16"}),
    "3d_zero1": (["--plugin", "3d", "--zero_stage", "1", "--batch_size", "1"],
                 {"plugin_class": "HybridParallelPlugin", "zero_stage": 1, "dp_size": 2, "precision": "bf16"}),
}


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    return {
        precision: train(TINY + STEPS + ["--plugin", "ddp", "--batch_size", "1", "--mixed_precision", precision],
                         base / precision)
        for precision in ("fp32", "bf16")
    }


def _check(run, reference, expected, tol):
    for key, value in expected.items():
        assert run["info"][key] == value, f"plugin fell back: {key}={run['info'][key]!r}, wanted {value!r}"
    assert run["info"]["cpu_compat"] is True
    assert len(run["losses"]) == 3
    for step, (got, ref) in enumerate(zip(run["losses"], reference["losses"]), start=1):
        assert abs(got - ref) <= tol, f"step {step}: loss {got:.6f} vs ddp {ref:.6f} (tol {tol})"


def test_ddp_reference_learns(ddp_reference):
    info = ddp_reference["fp32"]["info"]
    assert info["plugin_class"] == "TorchDDPPlugin" and info["world_size"] == 2
    assert info["gradient_as_bucket_view"] is True  # no second fp32 copy of the gradients (bench/memory.py)
    # bf16 on DDP is autocast over fp32 weights; it must track fp32 closely.
    assert ddp_reference["bf16"]["info"]["autocast"] == "torch.bfloat16"
    for a, b in zip(ddp_reference["fp32"]["losses"], ddp_reference["bf16"]["losses"]):
        assert abs(a - b) <= BF16_TOL


@pytest.mark.parametrize("name", sorted(FP32_PLUGINS))
def test_fp32_plugin_matches_ddp(name, ddp_reference, tmp_path):
    flags, expected = FP32_PLUGINS[name]
    run = train(TINY + STEPS + flags + ["--mixed_precision", "fp32"], tmp_path / name)
    _check(run, ddp_reference["fp32"], {**expected, "precision": "fp32"}, FP32_TOL)


@pytest.mark.parametrize("name", sorted(BF16_PLUGINS))
def test_bf16_plugin_matches_ddp(name, ddp_reference, tmp_path):
    flags, expected = BF16_PLUGINS[name]
    run = train(TINY + STEPS + flags + ["--mixed_precision", "bf16"], tmp_path / name)
    _check(run, ddp_reference["bf16"], expected, BF16_TOL)
