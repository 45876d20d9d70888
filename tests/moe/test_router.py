"""The router's loss terms: equal to HF's Mixtral load-balancing loss, a gradient for the router from the aux
term alone, and load figures that count what the router picked."""

import pytest
import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from colossal_hammer.model.build import load_config
from colossal_hammer.model.moe_configs import active_params, is_moe
from colossal_hammer.moe.router import RouterLosses, load_balancing_loss, moe_blocks


def tiny_moe():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(load_config("tiny_moe")).train()


def test_load_balancing_loss_is_mixtrals():
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(2 * 12, 4, generator=g) * 3 for _ in range(3)]
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0  # padding
    for m in (torch.ones_like(mask), mask):
        ours = load_balancing_loss(torch.cat(layers), m.reshape(-1).bool().repeat(3), 4, 2)
        theirs = load_balancing_loss_func(tuple(layers), 4, 2, m)
        assert torch.allclose(ours, theirs, rtol=1e-6, atol=0), (ours, theirs)


def test_aux_term_alone_gives_the_router_a_gradient_and_counts_the_load():
    model = tiny_moe()
    router = RouterLosses(model, aux_coef=1.0, z_coef=0.0)
    assert len(router.blocks) == 2 and router.num_experts == 4 and router.top_k == 2
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 10:] = 0
    model(input_ids=ids, attention_mask=mask)  # the LM loss is not computed, let alone backpropagated
    term = router.loss(mask, weight=1.0)
    term.backward()
    gates = [b.gate.weight.grad for b in router.blocks]
    assert all(g is not None and g.abs().sum() > 0 for g in gates)
    # from the aux term alone: nothing after the last router gets a gradient
    last = [p.grad for p in router.blocks[-1].experts.parameters()] + [model.lm_head.weight.grad]
    assert all(g is None or g.abs().sum() == 0 for g in last)

    totals = [float(v) for v in router.take_sums(owner=True)]  # as the loop's all_reduce hands them back
    figures = router.metrics(totals, units=1.0, dp_size=1)
    assert figures["router_aux_loss"] == pytest.approx(term.detach().item(), rel=1e-6)
    # each real token (16 + 10 of them) fills top_k = 2 slots in every layer
    assert [sum(row) for row in figures["expert_load"]] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert totals[2:6] and sum(totals[2:6]) == 26 * 2
    assert router.take_sums(owner=False) == [0.0] * len(totals)  # a non-owner adds nothing

    with torch.no_grad():  # evaluation forwards record nothing
        model(input_ids=ids)
    with pytest.raises(RuntimeError, match="unrecorded"):
        router.loss(mask, weight=1.0)


def test_active_parameters_leave_out_the_idle_experts():
    model = tiny_moe()
    config = model.config
    assert is_moe(config) and not is_moe(load_config("tiny"))
    expert = sum(p.numel() for p in moe_blocks(model)[0].experts[0].parameters())
    total = sum(p.numel() for p in model.parameters())
    idle = (config.num_local_experts - config.num_experts_per_tok) * config.num_hidden_layers
    assert active_params(config, total) == total - idle * expert
    assert active_params(load_config("tiny"), 1000) == 1000


def test_model_config_json_picks_the_class(tmp_path):
    (tmp_path / "moe.json").write_text('{"model_type": "mixtral", "hidden_size": 32, "intermediate_size": 64, '
                                       '"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, '
                                       '"vocab_size": 128, "num_local_experts": 8, "num_experts_per_tok": 2}')
    config = load_config(str(tmp_path / "moe.json"))
    assert config.model_type == "mixtral" and config.num_local_experts == 8 and config.sliding_window is None
    (tmp_path / "llama.json").write_text('{"hidden_size": 32, "num_attention_heads": 2}')
    assert load_config(str(tmp_path / "llama.json")).model_type == "llama"
    (tmp_path / "gpt.json").write_text('{"model_type": "gpt2"}')
    from colossal_hammer.errors import InputError

    with pytest.raises(InputError, match="model_type 'gpt2'"):
        load_config(str(tmp_path / "gpt.json"))


def skewed_routers(model, common: float = 0.29, spread: float = 5.0, favour: float = 0.36):
    """Every router prefers expert 0: hidden dimension 0 gets `common` in every embedding, so it dominates the
    normalised residual stream (about 7 of its RMS-64 norm), and only expert 0's router row reads it, with
    weight `favour` (a logit lead of about 2.5: expert 0 is every token's first choice, with probability about
    0.8, not saturated). The other router weights are scaled by `spread`, so tokens still differ in their
    second choice."""
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] += common
        for block in moe_blocks(model):
            block.gate.weight *= spread
            block.gate.weight[:, 0] = 0.0
            block.gate.weight[0, 0] = favour
    return model


def test_aux_loss_spreads_a_skewed_load():
    """From routers that favour one expert, training with the aux loss lowers the coefficient of variation of
    the tokens per expert; without it, it does not fall. Only the routers train (AdamW, the LM loss plus the
    router term): on a 64-wide model, a learning rate that moves the routers within 20 steps moves the
    attention and expert weights as far, and the reshuffled residual stream then changes the routing more
    than either loss does, which is not what this test is about."""
    cv = {}
    for coef in (1.0, 0.0):
        model = skewed_routers(tiny_moe())
        router = RouterLosses(model, aux_coef=coef, z_coef=0.0)
        gates = [b.gate.weight for b in router.blocks]
        for p in model.parameters():
            p.requires_grad_(any(p is g for g in gates))
        optimizer = torch.optim.AdamW(gates, lr=3e-3, weight_decay=0.0)
        g = torch.Generator().manual_seed(0)
        cv[coef] = []
        for _ in range(20):
            ids = torch.randint(0, 512, (4, 64), generator=g)
            mask = torch.ones_like(ids)
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss + router.loss(mask, weight=1.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            figures = router.metrics(router.take_sums(owner=True), units=1.0, dp_size=1)
            cv[coef].append(figures["expert_load_cv"])
            if len(cv[coef]) == 1:
                assert min(layer[0] for layer in figures["expert_load"]) > 0.45  # expert 0 in (nearly) every top 2
    print(f"\nexpert load CV, aux 1.0: {[round(c, 2) for c in cv[1.0]]}\n                aux 0:   "
          f"{[round(c, 2) for c in cv[0.0]]}")
    start = cv[1.0][0]
    assert cv[0.0][0] == start
    with_aux, without = sum(cv[1.0][-5:]) / 5, sum(cv[0.0][-5:]) / 5
    assert with_aux < 0.92 * start and with_aux < without - 0.05
