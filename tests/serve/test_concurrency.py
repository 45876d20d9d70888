"""Concurrent requests are decoded in one batch, each exactly as it is alone; a client that leaves frees its row."""

import json
import socket
import threading
import time

import httpx
import pytest

from tests.serve.conftest import API_KEY
from tests.serve.test_api import streamed_text

PROMPTS = [f"Question {i}: " + "tell me about the river " * (i % 6) + "人工智能" * (i % 3) for i in range(16)]


def test_sixteen_concurrent_streams_each_get_their_own_text(live, client):
    alone = [streamed_text(client, p, temperature=0, max_tokens=12) for p in PROMPTS]
    assert len(set(alone)) > 1  # different prompts, different replies: a mix-up would show
    engine = live.app.state.served.engine
    together, widest = [None] * len(PROMPTS), [0]
    start = threading.Barrier(len(PROMPTS))

    def run(i):
        start.wait()
        together[i] = streamed_text(client, PROMPTS[i], temperature=0, max_tokens=12)

    def watch():
        while any(t is None for t in together):
            batch = engine.batch
            widest[0] = max(widest[0], len(batch.rows) if batch else 0)
            time.sleep(0.001)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    watcher = threading.Thread(target=watch)
    for t in threads:
        t.start()
    watcher.start()
    for t in threads + [watcher]:
        t.join(timeout=120)
    assert together == alone
    assert widest[0] > 1  # they really were decoded together


def test_client_that_disconnects_frees_its_row(live, client):
    engine = live.app.state.served.engine
    body = {"messages": [{"role": "user", "content": "a long story"}], "max_tokens": 2000, "temperature": 0,
            "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{live.url}/v1/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {API_KEY}"}) as r:
            lines = r.iter_lines()
            for _ in range(5):  # the role event and two tokens
                next(lines)
            deadline = time.time() + 10
            while engine.batch is None and time.time() < deadline:  # the row joins the batch after its first token
                time.sleep(0.01)
            assert len(engine.batch.rows) == 1
            row = engine.batch.rows[0]
    deadline = time.time() + 10
    while engine.batch is not None and time.time() < deadline:
        time.sleep(0.05)
    assert engine.batch is None and row.cancelled
    assert len(row.generated) < 2000  # the row went with the client, long before its 2000 tokens
    assert streamed_text(client, "hi", temperature=0, max_tokens=3)[1] == "length"


def test_non_streaming_clients_that_disconnect_free_their_rows(live, client):
    """A client waiting for a whole reply that hangs up frees its row too (it used to decode to max_tokens)."""
    engine = live.app.state.served.engine
    body = json.dumps({"messages": [{"role": "user", "content": "a long story"}], "max_tokens": 2000,
                       "temperature": 0}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    sockets = [socket.create_connection(("127.0.0.1", live.port), timeout=30) for _ in range(4)]
    for s in sockets:
        s.sendall(head + body)
    deadline = time.time() + 30
    while (engine.batch is None or len(engine.batch.rows) < 4) and time.time() < deadline:
        time.sleep(0.01)  # each row joins the batch after its first token
    rows = list(engine.batch.rows)
    assert len(rows) == 4
    for s in sockets:
        s.close()
    deadline = time.time() + 60
    while engine.batch is not None and time.time() < deadline:
        time.sleep(0.05)
    assert engine.batch is None and all(r.cancelled for r in rows)
    assert all(len(r.generated) < 2000 for r in rows)  # they went with their clients, long before 2000 tokens
    assert streamed_text(client, "hi", temperature=0, max_tokens=3)[1] == "length"


def test_waiting_requests_are_prefilled_together_each_as_alone(live):
    """Requests that wait together are prefilled in one left-padded forward pass, each row as it is alone."""
    from colossal_hammer.serve.engine import Engine, SamplingParams
    from colossal_hammer.serve.prompts import completion_prompt_ids

    served = live.app.state.served
    model, tokenizer = served.engine.model, served.tokenizer
    prompts = [completion_prompt_ids(tokenizer, p) for p in ("a", "the river runs to the sea and", "人工智能是")]
    assert len({len(p) for p in prompts}) == 3  # different lengths: the short ones are padded

    def run(batch):
        engine = Engine(model, tokenizer, frozenset(), max_batch_size=8)
        prefills, original = [], engine._prefill
        engine._prefill = lambda groups: (prefills.append(len(groups)), original(groups))
        texts, finished, done = {i: [] for i in range(len(batch))}, set(), threading.Event()

        def sink_for(i):
            def sink(chunk):
                texts[i] += chunk.logprobs  # every token's logprob and top 5: the numbers, not just argmax
                if chunk.finish_reason:
                    finished.add(i)
                    if len(finished) == len(batch):
                        done.set()
            return sink

        for i, p in enumerate(batch):  # all waiting before the engine starts: one admission takes them all
            engine.submit(p, SamplingParams(max_tokens=6, temperature=0, logprobs=5), sink_for(i))
        engine.start()
        assert done.wait(60)
        engine.stop()
        return [texts[i] for i in range(len(batch))], prefills

    together, prefills = run(prompts)
    assert prefills == [3]
    for row, prompt in zip(together, prompts):
        alone = run([prompt])[0][0]
        assert [t for t, _, _ in row] == [t for t, _, _ in alone]
        assert [[i for i, _ in top] for _, _, top in row] == [[i for i, _ in top] for _, _, top in alone]
        assert [v for _, _, top in row for _, v in top] == pytest.approx([v for _, _, top in alone for _, v in top],
                                                                          abs=1e-4)
