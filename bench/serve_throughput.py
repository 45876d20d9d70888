"""Serving throughput: generated tokens/s and time to first token at concurrency 1, 4 and 16, one server.

The server (python -m colossal_hammer.serve) runs in its own process; clients stream chat completions
at temperature 0 from threads. Without --model, a random Llama of colossal_hammer's "small" shape
(hidden 256, 4 layers) with the demo's base tokenizer is built in a temporary folder.
Usage: python bench/serve_throughput.py [--model DIR] [--max_tokens 64] [--rounds 2]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def small_model(folder: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from colossal_hammer.data import corpora
    from colossal_hammer.demo import base_tokenizer
    from colossal_hammer.model.build import NAMED_CONFIGS

    base_tokenizer.build_base_tokenizer(corpora.english_paragraphs(), folder, vocab_size=2000)
    tok = AutoTokenizer.from_pretrained(folder)
    config = LlamaConfig(**{**NAMED_CONFIGS["small"], "vocab_size": len(tok)})
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def one_request(url: str, prompt: str, max_tokens: int, out: list) -> None:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    start, first, tokens = time.perf_counter(), None, 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event["choices"] and event["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    out.append((first if first is not None else float("nan"), tokens))


def run(url: str, concurrency: int, max_tokens: int, rounds: int, report: bool = True) -> None:
    results, start = [], time.perf_counter()
    for r in range(rounds):
        threads = [threading.Thread(target=one_request, args=(url, f"Round {r}, client {i}: tell me a story "
                                                              f"about the number {i}.", max_tokens, results))
                   for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    seconds = time.perf_counter() - start
    if not report:
        return
    generated = sum(n for _, n in results)
    ttft = [t for t, _ in results]
    print(f"concurrency {concurrency:2d}: {generated / seconds:7.1f} generated tokens/s, time to first token "
          f"median {statistics.median(ttft) * 1000:6.0f} ms, max {max(ttft) * 1000:6.0f} ms "
          f"({len(results)} requests, {generated} tokens, {seconds:.1f} s)", flush=True)


@contextmanager
def running_server(model: str, device: str = "cpu", log=None):
    """`python -m colossal_hammer.serve` on a free port of 127.0.0.1, answering /health; yields its URL and
    stops it on leaving. SystemExit with one line if it does not come up within 180 s."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    server = subprocess.Popen([sys.executable, "-m", "colossal_hammer.serve", "--model", model, "--port",
                               str(port), "--device", device], env=env, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT if log else None)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("error: the server did not start")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="Model folder to serve (default: a random 'small' Llama)")
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="Rounds of requests per concurrency level")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or small_model(tmp)
        with running_server(model) as url:
            print(f"model: {model if args.model else 'random small Llama (hidden 256, 4 layers)'}; "
                  f"{args.max_tokens} tokens per request, greedy, "
                  f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}")
            run(url, 1, 4, 1, report=False)  # warm-up
            for concurrency in (1, 4, 16):
                run(url, concurrency, args.max_tokens, args.rounds)


if __name__ == "__main__":
    main()
