"""NEFTune: noise only in training mode, scaled by each sample's real length, only on real positions."""

import math

import torch
from transformers import AutoModelForCausalLM

from colossal_hammer.model.build import load_config
from colossal_hammer.model.neftune import NEFTune


def test_noise_in_training_only_and_scaled_by_real_length():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(load_config("tiny"))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 512, (2, 16))
    emb = model.get_input_embeddings()
    clean = emb(ids).detach()
    alpha = 5.0
    neft = NEFTune(emb, alpha)

    model.eval()
    with torch.no_grad():
        eval_logits_before = model(ids).logits
    model.train()
    lengths = torch.tensor([16, 6])  # row 1 has 10 padding positions
    neft.set_lengths(lengths)
    noisy = emb(ids).detach()
    diff = noisy - clean
    dim = clean.shape[-1]
    for row, length in enumerate(lengths.tolist()):
        bound = alpha / math.sqrt(length * dim)
        assert diff[row, :length].abs().max() <= bound * (1 + 1e-5)
        assert diff[row, :length].abs().max() > 0.5 * bound  # uniform noise reaches near its bound
        # and fills it: U(-b, b) has standard deviation b / sqrt(3). A scale from the padded length (16
        # for row 1) would give 0.61 of it; 10 % covers the estimate's error over 384 values and more
        std = diff[row, :length].std().item()
        assert abs(std / (bound / math.sqrt(3)) - 1) < 0.1, (row, std, bound)
        assert torch.equal(diff[row, length:], torch.zeros_like(diff[row, length:]))

    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, eval_logits_before)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    neft.remove()
    model.train()
    assert torch.equal(emb(ids), clean)


def test_train_py_with_neftune_runs(tmp_path):
    from tests.distributed import TINY, train

    run = train(TINY + ["--plugin", "ddp", "--max_steps", "2", "--use_neft", "--neft_alpha", "5",
                        "--save_dir", tmp_path / "ckpt"], tmp_path / "logs")
    plain = train(TINY + ["--plugin", "ddp", "--max_steps", "2", "--save_dir", tmp_path / "ckpt2"], tmp_path / "l2")
    assert run["losses"] != plain["losses"]  # the noise reached the training forward
