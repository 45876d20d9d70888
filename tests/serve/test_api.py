"""The server through the real openai SDK: models, chat and completions, streaming, and the same greedy text
as inference_example.py."""

import os
import subprocess
import sys

import httpx
import pytest

from tests.distributed import REPO
from tests.serve.conftest import API_KEY

PROMPT = "什么是人工智能？"


def chat(client, content, **kwargs):
    return client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": content}],
                                          **kwargs)


def streamed_text(client, content, **kwargs):
    parts, finish = [], None
    for chunk in chat(client, content, stream=True, **kwargs):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(parts), finish


def test_health_and_models(live, client):
    assert httpx.get(f"{live.url}/health").json() == {"status": "ok"}
    assert [m.id for m in client.models.list().data] == ["tiny-chat"]


def test_chat_greedy_streamed_equals_unstreamed_equals_inference_example(live, client, served_model):
    whole = chat(client, PROMPT, temperature=0, max_tokens=8)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("length", "stop")
    assert whole.usage.completion_tokens <= 8 and whole.usage.prompt_tokens > 5
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    assert streamed_text(client, PROMPT, temperature=0, max_tokens=8) == (text, whole.choices[0].finish_reason)
    # inference_example.py with the same (Llama-2) template, greedy: the same reply
    proc = subprocess.run([sys.executable, str(REPO / "inference_example.py"), "--model_path", served_model,
                           "--chat", "llama2", "--do_sample", "false", "--max_new_tokens", "8", "--input_txt", PROMPT],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert proc.stdout.rstrip("\n") == text


def test_stream_ends_with_done_and_reports_usage(live):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    r = httpx.post(f"{live.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in r.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    import json

    usage = json.loads(events[-2])["usage"]
    assert usage["completion_tokens"] == 4 and json.loads(events[-2])["choices"] == []


def test_sampling_is_seeded_and_stop_strings_cut(client):
    a = chat(client, "hello", temperature=1.0, top_p=0.9, seed=7, max_tokens=10).choices[0].message.content
    b = chat(client, "hello", temperature=1.0, top_p=0.9, seed=7, max_tokens=10).choices[0].message.content
    assert a == b
    full = chat(client, PROMPT, temperature=0, max_tokens=12).choices[0].message.content
    stop = full[3:5]
    cut = chat(client, PROMPT, temperature=0, max_tokens=12, stop=[stop])
    assert cut.choices[0].message.content == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert streamed_text(client, PROMPT, temperature=0, max_tokens=12, stop=stop)[0] == full[:full.index(stop)]


def test_completions_plain_and_streamed(client):
    whole = client.completions.create(model="tiny-chat", prompt="The model", max_tokens=6, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].text
    parts = [c.choices[0].text for c in client.completions.create(model="tiny-chat", prompt="The model",
                                                                  max_tokens=6, temperature=0, stream=True)]
    assert "".join(parts) == whole.choices[0].text


def test_checkpoint_step_folder_serves(served_model, tmp_path):
    """A checkpoint's step-N folder (weights in modeling/) is a --model too."""
    import shutil

    from colossal_hammer.serve.__main__ import ServeConfig, make_app
    from tests.serve.live import LiveServer

    shutil.copytree(served_model, tmp_path / "step-3" / "modeling")
    app = make_app(ServeConfig(model=str(tmp_path / "step-3")))
    with LiveServer(app) as server:
        r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "a", "max_tokens": 2, "model": "step-3"})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
    assert not app.state.served.engine.alive  # the model thread ends with the server


def test_the_tokenizers_own_template_is_used(served_model, tmp_path):
    """An SFT checkpoint's chat_template wins over the built-in Llama-2 one."""
    import shutil

    from transformers import AutoTokenizer

    from colossal_hammer.data.sft import BUILTIN_TEMPLATES
    from colossal_hammer.serve.__main__ import ServeConfig, make_app
    from tests.serve.live import LiveServer

    shutil.copytree(served_model, tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    tok.chat_template = BUILTIN_TEMPLATES[3]
    tok.save_pretrained(tmp_path / "m")
    messages = [{"role": "user", "content": "hello"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|start_header_id|>assistant" in text
    with LiveServer(make_app(ServeConfig(model=str(tmp_path / "m")))) as server:
        r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
    assert r.json()["usage"]["prompt_tokens"] == len(tok(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("argv, message", [
    (["--model", "/nonexistent"], "error: --model /nonexistent: no such folder"),
    (["--model", ".", "--max_batch_size", "0"], "error: --max_batch_size 0: must be at least 1"),
])
def test_bad_flags_are_one_error_line(argv, message):
    proc = subprocess.run([sys.executable, "-m", "colossal_hammer.serve", "--device", "cpu", *argv],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and proc.stderr.startswith(message) and "Traceback" not in proc.stderr
