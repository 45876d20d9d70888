"""Gradient accumulation 2 x batch 1 is the same optimisation as batch 2, per plugin."""

import pytest

from tests.distributed import TINY, train

CASES = {
    "ddp": (["--plugin", "ddp"], "fp32", 1e-5),
    "zero2": (["--plugin", "zero2"], "fp32", 1e-5),
    # pipeline: accumulation wraps execute_pipeline and the LR schedule must step once per optimizer step
    "3d_pp2": (["--plugin", "3d", "--pp", "2", "--microbatch_size", "1"], "fp32", 1e-5),
    "gemini": (["--plugin", "gemini"], "bf16", 2e-2),
}


# ddp (no_sync) and pipeline (one execute_pipeline a step) by default; ZeRO-2's and Gemini's own
# accumulation buffers with the slow tests
@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in ("ddp", "3d_pp2") else pytest.mark.slow)
                                  for n in sorted(CASES)])
def test_accumulation_matches_bigger_batch(name, tmp_path):
    flags, precision, tol = CASES[name]
    # pp=2 has a single data-parallel replica: it takes the global batch (4) on that replica.
    per_rank = 2 if name == "3d_pp2" else 1
    common = TINY + flags + ["--max_steps", "3", "--mixed_precision", precision]
    accum = train(common + ["--batch_size", str(per_rank), "--accumulation_steps", "2"], tmp_path / "accum")
    big = train(common + ["--batch_size", str(2 * per_rank)], tmp_path / "big")
    assert len(accum["losses"]) == len(big["losses"]) == 3
    assert accum["records"][0]["tokens"] == big["records"][0]["tokens"] == 4 * 64
    for step, (a, b) in enumerate(zip(accum["losses"], big["losses"]), start=1):
        assert abs(a - b) <= tol, f"step {step}: accumulated {a:.6f} vs batch {b:.6f}"
    # The learning rate followed the same schedule, one step per optimizer step.
    assert [r["lr"] for r in accum["records"]] == [r["lr"] for r in big["records"]]
