"""n, logprobs, penalties, logit_bias, stop_token_ids, min_tokens and echo through the real openai client."""

import math

import pytest

USER = [{"role": "user", "content": "tell me about the river"}]


def chat(client, **kwargs):
    return client.chat.completions.create(model="tiny-chat", messages=USER, **kwargs)


def first_greedy_token(client):
    reply = chat(client, temperature=0, max_tokens=1, logprobs=True, top_logprobs=1)
    return reply.choices[0].logprobs.content[0]


def test_n_choices_share_the_prompt_and_are_equal_when_greedy(client):
    reply = chat(client, n=3, temperature=0, max_tokens=6)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) == 1 and reply.choices[0].message.content
    alone = chat(client, temperature=0, max_tokens=6)
    assert reply.choices[0].message.content == alone.choices[0].message.content
    assert reply.usage.completion_tokens == 3 * alone.usage.completion_tokens
    assert reply.usage.prompt_tokens == alone.usage.prompt_tokens  # one prompt, prefilled once
    sampled = chat(client, n=4, temperature=1.5, max_tokens=8, seed=3)
    assert len({c.message.content for c in sampled.choices}) > 1  # each choice its own draws
    again = chat(client, n=4, temperature=1.5, max_tokens=8, seed=3)
    assert [c.message.content for c in again.choices] == [c.message.content for c in sampled.choices]


def test_n_choices_stream_each_under_its_index(client):
    texts, finishes = {}, {}
    for chunk in chat(client, n=2, temperature=0, max_tokens=5, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            finishes[c.index] = c.finish_reason or finishes.get(c.index)
    assert texts[0] == texts[1] == chat(client, temperature=0, max_tokens=5).choices[0].message.content
    assert set(finishes) == {0, 1} and all(finishes.values())


def test_top_logprobs_at_temperature_0_put_the_chosen_token_first(client):
    reply = chat(client, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for token in content:
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].token == token.token and token.top_logprobs[0].logprob == token.logprob
        assert token.logprob <= 0 and token.logprob == max(t.logprob for t in token.top_logprobs)
    streamed = [t.token for chunk in chat(client, temperature=0, max_tokens=5, logprobs=True, stream=True)
                for c in chunk.choices if c.logprobs for t in c.logprobs.content]
    assert streamed == [t.token for t in content]


def test_logit_bias_minus_100_on_the_greedy_first_token_changes_it(client, live):
    first = first_greedy_token(client)
    token_id = live.app.state.served.tokenizer.convert_tokens_to_ids(first.token)
    biased = chat(client, temperature=0, max_tokens=1, logprobs=True, logit_bias={str(token_id): -100})
    assert biased.choices[0].logprobs.content[0].token != first.token
    pushed = chat(client, temperature=0, max_tokens=1, logprobs=True, logit_bias={"100": 100})
    assert pushed.choices[0].logprobs.content[0].token == live.app.state.served.tokenizer.convert_ids_to_tokens(100)


def test_frequency_penalty_changes_a_repetitive_greedy_answer(client):
    plain = chat(client, temperature=0, max_tokens=40, logprobs=True).choices[0].logprobs.content
    tokens = [t.token for t in plain]
    assert len(set(tokens)) < len(tokens)  # the random model repeats itself
    penalised = [t.token for t in chat(client, temperature=0, max_tokens=40, logprobs=True,
                                       frequency_penalty=2).choices[0].logprobs.content]
    assert penalised != tokens
    assert len(set(penalised)) > len(set(tokens))  # fewer repeats
    for extra in (dict(presence_penalty=2), dict(extra_body={"repetition_penalty": 1.5})):
        assert [t.token for t in chat(client, temperature=0, max_tokens=40, logprobs=True, **extra)
                .choices[0].logprobs.content] != tokens, extra


def test_stop_token_ids_and_min_tokens(client, live):
    tokenizer = live.app.state.served.tokenizer
    plain = chat(client, temperature=0, max_tokens=8, logprobs=True)
    tokens = [tokenizer.convert_tokens_to_ids(t.token) for t in plain.choices[0].logprobs.content]
    stopped = chat(client, temperature=0, max_tokens=8, extra_body={"stop_token_ids": [tokens[2]]})
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == tokens.index(tokens[2]) + 1
    # min_tokens: the stop id is masked for the first 5 tokens, so the reply runs past it
    held = chat(client, temperature=0, max_tokens=8, logprobs=True,
                extra_body={"stop_token_ids": [tokens[0]], "min_tokens": 5})
    assert held.usage.completion_tokens >= 5
    assert tokenizer.convert_tokens_to_ids(held.choices[0].logprobs.content[0].token) != tokens[0]


def test_completion_logprobs_0_and_echo_as_lm_eval_sends_them(client, live):
    tokenizer = live.app.state.served.tokenizer
    plain = client.completions.create(model="tiny-chat", prompt="The river", max_tokens=3, temperature=0,
                                      logprobs=0)
    lp = plain.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 3 and all(len(t) == 1 for t in lp.top_logprobs)
    assert "".join(tokenizer.convert_tokens_to_string([t]) for t in lp.tokens).strip() == plain.choices[0].text.strip()
    # lm-eval's local-completions loglikelihood: token ids, echo, max_tokens 1, logprobs 1, temperature 0
    context = tokenizer("The river runs", add_special_tokens=True)["input_ids"]
    continuation = tokenizer(" to the sea", add_special_tokens=False)["input_ids"]
    out = client.completions.create(model="tiny-chat", prompt=[context + continuation], max_tokens=1, temperature=0,
                                    logprobs=1, echo=True, seed=1234).choices[0]
    lp = out.logprobs
    assert len(lp.token_logprobs) == len(context + continuation) + 1 and lp.token_logprobs[0] is None
    assert lp.top_logprobs[0] is None and all(len(t) <= 2 for t in lp.top_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset) and out.text.startswith(
        tokenizer.decode(context + continuation, skip_special_tokens=True))
    scored = lp.token_logprobs[len(context):-1]
    assert len(scored) == len(continuation) and all(v <= 0 for v in scored)
    # the same numbers as the model's own forward pass
    import torch

    model = live.app.state.served.engine.model
    with torch.no_grad():
        logits = model(torch.tensor([context + continuation])).logits[0].float()
    expected = torch.log_softmax(logits, -1)[torch.arange(len(context) - 1, len(context + continuation) - 1),
                                             torch.tensor(continuation)]
    assert scored == pytest.approx(expected.tolist(), abs=1e-4)
    is_greedy = all(t == max(top.values()) for t, top in zip(scored, lp.top_logprobs[len(context):-1]))
    argmax = logits[len(context) - 1:-1].argmax(-1).tolist() == continuation
    assert is_greedy == argmax
    # max_tokens 0 with echo: the prompt's logprobs alone
    only = client.completions.create(model="tiny-chat", prompt=[context], max_tokens=0, echo=True, logprobs=0)
    assert len(only.choices[0].logprobs.token_logprobs) == len(context) and only.usage.completion_tokens == 0
    assert not math.isnan(sum(only.choices[0].logprobs.token_logprobs[1:]))


def test_echo_streams_the_prompt_first(client):
    parts = [c.choices[0].text for c in client.completions.create(model="tiny-chat", prompt="The river", echo=True,
                                                                  max_tokens=3, temperature=0, stream=True)]
    whole = client.completions.create(model="tiny-chat", prompt="The river", echo=True, max_tokens=3, temperature=0)
    assert parts[0].startswith("The river") and "".join(parts) == whole.choices[0].text


def test_several_prompts_in_one_request_as_each_alone(client, live):
    """lm-eval's API models send a batch of prompts in one request: choice k * n + i is prompt k's i-th."""
    tokenizer = live.app.state.served.tokenizer
    batch = [tokenizer("The river runs to the sea", add_special_tokens=True)["input_ids"],
             tokenizer("人工智能", add_special_tokens=True)["input_ids"], "A plain string prompt"]
    together = client.completions.create(model="tiny-chat", prompt=batch, max_tokens=3, temperature=0, logprobs=2,
                                         echo=True, n=2)
    assert [c.index for c in together.choices] == list(range(6))
    for k, prompt in enumerate(batch):
        alone = client.completions.create(model="tiny-chat", prompt=prompt, max_tokens=3, temperature=0, logprobs=2,
                                          echo=True).choices[0]
        for choice in together.choices[2 * k:2 * k + 2]:
            assert choice.text == alone.text and choice.logprobs.tokens == alone.logprobs.tokens
            assert choice.logprobs.text_offset == alone.logprobs.text_offset
            assert choice.logprobs.token_logprobs[1:] == pytest.approx(alone.logprobs.token_logprobs[1:], abs=1e-4)
    assert together.choices[4].text.startswith("A plain string prompt")


def test_lm_eval_local_completions_scores_as_the_model_does(live, served_model, monkeypatch):
    """lm-eval's own API model (local-completions, batches of 2) against the server: its log-likelihoods and
    greedy flags are the model's."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from tests.serve.conftest import API_KEY

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    lm = LocalCompletionsAPI(base_url=f"{live.url}/v1/completions", model="tiny-chat", tokenizer=served_model,
                             tokenizer_backend="huggingface", batch_size=2, max_retries=1)
    pairs = [("The river runs", " to the sea"), ("人工智能", "是什么"), ("a b c", " d")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)],
                           disable_tqdm=True)
    model = live.app.state.served.engine.model
    for (context, continuation), (loglik, greedy) in zip(pairs, got):
        context_ids, continuation_ids = lm._encode_pair(context, continuation)
        with torch.no_grad():
            logits = model(torch.tensor([context_ids + continuation_ids])).logits[0].float()
        rows = logits[len(context_ids) - 1:-1]
        expected = torch.log_softmax(rows, -1)[torch.arange(len(continuation_ids)), torch.tensor(continuation_ids)]
        assert loglik == pytest.approx(float(expected.sum()), abs=1e-3)
        assert greedy == (rows.argmax(-1).tolist() == continuation_ids)


def test_response_format_json_object_and_json_schema_parse(client, live):
    """The grammar keeps every reply valid JSON. A random model's strings never end by themselves, so the
    json_object request biases the closing tokens; without the grammar, the same request writes no JSON."""
    import json

    tokenizer = live.app.state.served.tokenizer
    closing = {str(i): 20 for i in range(len(tokenizer))
               if tokenizer.convert_ids_to_tokens(i).lstrip("\u2581") in ('"', "}")}
    assert closing
    for seed in (1, 2):
        reply = chat(client, temperature=1.0, seed=seed, max_tokens=100, logit_bias=closing,
                     response_format={"type": "json_object"})
        assert reply.choices[0].finish_reason == "stop"  # the matcher ends the reply once the object is complete
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
        with pytest.raises(ValueError):
            json.loads(chat(client, temperature=1.0, seed=seed, max_tokens=20, logit_bias=closing)
                       .choices[0].message.content)
    schema = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 99},
                                               "ok": {"type": "boolean"}},
              "required": ["answer", "ok"], "additionalProperties": False}
    for stream in (False, True):
        kwargs = dict(temperature=0, max_tokens=60, response_format={"type": "json_schema", "json_schema": {
            "name": "answer", "schema": schema}})
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in chat(client, stream=True, **kwargs) if c.choices)
        else:
            text = chat(client, **kwargs).choices[0].message.content
        value = json.loads(text)
        assert text == json.dumps(value, separators=(",", ":"))  # compact, ended when complete
        assert set(value) == {"answer", "ok"} and 0 <= value["answer"] <= 99 and isinstance(value["ok"], bool)
