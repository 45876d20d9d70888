"""Vocabulary stages: stage 1 trains only embeddings and lm_head; stage 2 starts from its weights at step 0."""

import torch
from safetensors.torch import load_file

from colossal_hammer.model.build import build_model
from tests.distributed import TINY, train


def saved_weights(step_dir):
    state = {}
    for f in sorted((step_dir / "modeling").glob("*.safetensors")):
        state.update(load_file(f))
    return state


def test_stage1_frozen_then_stage2_from_weights_only(tmp_path):
    stage1 = train(TINY + ["--plugin", "zero2", "--mixed_precision", "fp32", "--freeze_non_embeds_params",
                           "--max_steps", "3", "--lr", "1e-2", "--save_dir", tmp_path / "s1"], tmp_path / "s1logs")
    initial = build_model(None, "tiny", seed=42).state_dict()
    after = saved_weights(tmp_path / "s1" / "step-3")
    changed = {k for k in initial if not torch.equal(initial[k], after[k])}
    assert changed == {"model.embed_tokens.weight", "lm_head.weight"}, changed
    assert len(stage1["losses"]) == 3

    # lr 0: the one step of stage 2 cannot move weights, so what it saves is what it started from
    stage2 = train(["--benchmark", "--num_samples", "16", "--max_length", "64", "--plugin", "ddp",
                    "--mixed_precision", "fp32", "--load_weights_only", tmp_path / "s1" / "step-3", "--lr", "0",
                    "--max_steps", "1", "--save_dir", tmp_path / "s2"], tmp_path / "s2logs")
    assert stage2["info"]["start_step"] == 0 and stage2["info"]["resumed_from"] is None
    assert [r["step"] for r in stage2["records"]] == [1]
    start = saved_weights(tmp_path / "s2" / "step-1")
    assert all(torch.equal(start[k], after[k]) for k in after)
