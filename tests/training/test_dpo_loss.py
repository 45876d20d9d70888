"""The DPO losses against TRL's own code (trl 0.18.2: DPOTrainer.dpo_loss, CPOTrainer.cpo_loss for simpo,
ORPOTrainer.odds_ratio_loss), called on a stand-in trainer object; and per-pair log-probs from one packed
row equal those of each sequence run alone."""

import types

import pytest
import torch

from colossal_hammer.model.doc_attention import DocumentAttention, install
from colossal_hammer.training.dpo import preference_loss, sequence_logps

trl = pytest.importorskip("trl")  # the "test" extra installs it

IGNORE = -100


def trainer_stub(loss_type, beta, **more):
    return types.SimpleNamespace(accelerator=types.SimpleNamespace(device=torch.device("cpu")), reference_free=False,
                                 f_divergence_type="reverse_kl", loss_type=loss_type, beta=beta, label_smoothing=0.0,
                                 use_weighting=False, **more)


def logps(seed, n=16):
    g = torch.Generator().manual_seed(seed)
    return -torch.rand(n, 2, generator=g, dtype=torch.float64) * 60, torch.randint(1, 40, (n, 2), generator=g)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_losses_equal_trl(loss_type, beta):
    from trl import DPOTrainer

    policy, counts = logps(1)
    reference, _ = logps(2)
    ours, rewards = preference_loss(policy, reference, counts, loss_type, beta)
    if loss_type == "ipo":  # TRL averages log-probs over the completion's tokens for ipo before dpo_loss
        policy, reference = policy / counts, reference / counts
    want, chosen, rejected = DPOTrainer.dpo_loss(trainer_stub(loss_type, beta), policy[:, 0], policy[:, 1],
                                                 reference[:, 0], reference[:, 1])
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rewards, torch.stack([chosen, rejected], 1), rtol=1e-12, atol=1e-12)


def test_simpo_and_orpo_equal_trl():
    from trl import CPOTrainer, ORPOTrainer

    policy, counts = logps(3)
    mean = policy / counts
    stub = trainer_stub("simpo", 0.2, simpo_gamma=0.5)
    ours, rewards = preference_loss(policy, None, counts, "simpo", 0.2, gamma=0.5)
    want, chosen, rejected = CPOTrainer.cpo_loss(stub, mean[:, 0], mean[:, 1])
    torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rewards, torch.stack([chosen, rejected], 1), rtol=1e-12, atol=1e-12)
    # ORPO: TRL's loss is the chosen NLL minus beta * log sigmoid(log odds); here the NLL is per pair
    ours, rewards = preference_loss(policy, None, counts, "orpo", 0.2)
    odds, chosen, rejected, _, _ = ORPOTrainer.odds_ratio_loss(stub, mean[:, 0], mean[:, 1])
    torch.testing.assert_close(ours, -mean[:, 0] - odds, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rewards, torch.stack([chosen, rejected], 1), rtol=1e-12, atol=1e-12)


def test_equal_policy_and_reference_give_ln2_and_zero_rewards():
    policy, counts = logps(4)
    loss, rewards = preference_loss(policy, policy.clone(), counts, "sigmoid", 0.1)
    assert torch.all((loss - torch.log(torch.tensor(2.0, dtype=loss.dtype))).abs() < 1e-12)
    assert torch.all(rewards == 0)


def test_pair_row_logps_equal_each_sequence_alone():
    """A row holds chosen then rejected (and padding); document attention keeps them apart, so the sums
    equal those of two separate forwards."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    install(model, DocumentAttention("mask"))
    chosen = torch.randint(0, 101, (9,))
    rejected = torch.randint(0, 101, (13,))
    prompt_len = 5
    rejected[:prompt_len] = chosen[:prompt_len]

    def labels_of(ids):
        return torch.cat([torch.full((prompt_len,), IGNORE), ids[prompt_len:]])

    width = 9 + 13 + 3  # three padding tokens
    ids = torch.zeros(1, width, dtype=torch.long)
    ids[0, :22] = torch.cat([chosen, rejected])
    labels = torch.full((1, width), IGNORE)
    labels[0, :22] = torch.cat([labels_of(chosen), labels_of(rejected)])
    position_ids = torch.tensor([list(range(9)) + list(range(16))])
    attention_mask = torch.tensor([[1] * 22 + [0] * 3])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids).logits
        got, counts = sequence_logps(logits, labels, position_ids, attention_mask)
        alone = []
        for seq in (chosen, rejected):
            out = model(input_ids=seq[None]).logits.float().log_softmax(-1)[0, :-1]
            alone.append(out.gather(1, seq[1:, None])[prompt_len - 1:].sum())
    assert counts.tolist() == [[9 - prompt_len, 13 - prompt_len]]
    torch.testing.assert_close(got[0], torch.stack(alone), rtol=1e-5, atol=1e-5)
