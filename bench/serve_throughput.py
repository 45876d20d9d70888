"""Serving throughput: the server against batched model.generate and against its own engine, side by side.

One run, one model, the same chat prompts and 1 thread everywhere; every request makes exactly
--max_tokens greedy tokens (min_tokens / min_new_tokens, so an early EOS changes no count):
  generate  transformers' model.generate on the whole batch (left-padded), in this process
  engine    colossal_hammer's engine in this process, all requests submitted at once
  server    python -m colossal_hammer.serve in its own process, clients streaming over HTTP (one asyncio client)
Prints generated tokens/s at concurrency 1 and 16, the ratios engine/generate and server/generate
(the HTTP/SSE path is server against engine), and the median time to first token (generate's is its
prefill: a generate call with one new token). Without --model, a random Llama of colossal_hammer's
"small" shape (hidden 256, 4 layers) with the demo's base tokenizer is built in a temporary folder.
Usage: python bench/serve_throughput.py [--model DIR] [--max_tokens 64] [--rounds 2]
"""

import argparse
import asyncio
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
CONCURRENCY = (1, 16)


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


def questions(concurrency: int, round_: int):
    return [f"Round {round_}, client {i}: tell me a story about the number {i}." for i in range(concurrency)]


def report(name: str, concurrency: int, tokens: int, seconds: float, ttft) -> float:
    rate = tokens / seconds
    print(f"  {name:8s} concurrency {concurrency:2d}: {rate:7.1f} generated tokens/s, time to first token median "
          f"{statistics.median(ttft) * 1000:6.0f} ms, max {max(ttft) * 1000:6.0f} ms ({tokens} tokens, "
          f"{seconds:.1f} s)", flush=True)
    return rate


def bench_generate(model, tokenizer, prompt_ids, max_tokens: int):
    import torch

    width = max(len(p) for p in prompt_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    with torch.inference_mode():
        start = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=pad)
        first = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens,
                             min_new_tokens=max_tokens, do_sample=False, pad_token_id=pad)
        seconds = time.perf_counter() - start
    return (out.shape[1] - width) * len(prompt_ids), seconds, [first] * len(prompt_ids)


def bench_engine(engine, prompt_ids, max_tokens: int):
    from colossal_hammer.serve.engine import SamplingParams

    done, firsts, lock = threading.Event(), {}, threading.Lock()
    counts = {}
    start = time.perf_counter()

    def sink_for(i):
        def sink(chunk):
            with lock:
                firsts.setdefault(i, time.perf_counter() - start)
                if chunk.finish_reason:
                    counts[i] = chunk.completion_tokens
                    if len(counts) == len(prompt_ids):
                        done.set()
        return sink

    for i, p in enumerate(prompt_ids):
        engine.submit(p, SamplingParams(max_tokens=max_tokens, temperature=0, min_tokens=max_tokens), sink_for(i))
    done.wait()
    return sum(counts.values()), time.perf_counter() - start, list(firsts.values())


async def one_request(client, url: str, prompt: str, max_tokens: int):
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "min_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event["choices"] and event["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return first if first is not None else float("nan"), tokens


def bench_server(url: str, prompts, max_tokens: int):
    """All requests at once from one asyncio client with pooled connections: threads with a connection each
    cost the client more CPU than the server spends (on a 2-core machine they share), hiding the server."""
    async def run():
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as client:
            start = time.perf_counter()
            results = await asyncio.gather(*[one_request(client, url, p, max_tokens) for p in prompts])
            return results, time.perf_counter() - start

    results, seconds = asyncio.run(run())
    return sum(n for _, n in results), seconds, [t for t, _ in results]


@contextmanager
def running_server(model: str, device: str = "cpu", log=None, max_batch_size: int = max(CONCURRENCY)):
    """`python -m colossal_hammer.serve` on a free port of 127.0.0.1, answering /health; yields its URL and
    stops it on leaving. SystemExit with one line if it does not come up within 180 s."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    server = subprocess.Popen([sys.executable, "-m", "colossal_hammer.serve", "--model", model, "--port", str(port),
                               "--device", device, "--max_batch_size", str(max_batch_size)], env=env, cwd=REPO,
                              stdout=log, stderr=subprocess.STDOUT if log else None)
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
        server.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="Model folder to serve (default: a random 'small' Llama)")
    p.add_argument("--max_tokens", type=int, default=64, help="Greedy tokens per request (all of them made)")
    p.add_argument("--rounds", type=int, default=2, help="Rounds of requests per concurrency level")
    args = p.parse_args()
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(threads))
    from colossal_hammer.serve import loading
    from colossal_hammer.serve.engine import Engine
    from colossal_hammer.serve.prompts import chat_prompt_ids

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or small_model(tmp)
        model, tokenizer = loading.load(model_dir, device="cpu")
        ids = {(c, r): [chat_prompt_ids(tokenizer, [{"role": "user", "content": q}]) for q in questions(c, r)]
               for c in CONCURRENCY for r in range(args.rounds)}
        print(f"model: {model_dir if args.model else 'random small Llama (hidden 256, 4 layers)'}; "
              f"{args.max_tokens} greedy tokens per request, {args.rounds} rounds, OMP_NUM_THREADS={threads}")
        bench_generate(model, tokenizer, ids[1, 0], 4)  # warm-ups
        engine = Engine(model, tokenizer, loading.eos_ids(model, tokenizer), max(CONCURRENCY)).start()
        with running_server(model_dir) as url:
            totals = interleaved(model, tokenizer, engine, url, ids, args)
        rates = {key: report(key[0], key[1], *total) for key, total in totals.items()}
        for c in CONCURRENCY:
            print(f"concurrency {c:2d}: engine/generate {rates['engine', c] / rates['generate', c]:.2f}x, "
                  f"server/generate {rates['server', c] / rates['generate', c]:.2f}x, "
                  f"server/engine {rates['server', c] / rates['engine', c]:.2f}x", flush=True)


def interleaved(model, tokenizer, engine, url, ids, args) -> dict:
    """{(runner, concurrency): [tokens, seconds, first-token times]} over every round, runners taking turns."""
    runs = {"generate": lambda c, r: bench_generate(model, tokenizer, ids[c, r], args.max_tokens),
            "engine": lambda c, r: bench_engine(engine, ids[c, r], args.max_tokens),
            "server": lambda c, r: bench_server(url, questions(c, r), args.max_tokens)}
    totals = {(name, c): [0, 0.0, []] for name in runs for c in CONCURRENCY}
    try:
        bench_engine(engine, ids[1, 0], 4)
        bench_server(url, questions(1, 0), 4)
        # interleaved round by round: on a machine others share, load changes by the minute
        for c in CONCURRENCY:
            for r in range(args.rounds):
                for name, run in runs.items():
                    n, s, t = run(c, r)
                    total = totals[name, c]
                    total[0], total[1], total[2] = total[0] + n, total[1] + s, total[2] + t
    finally:
        engine.stop()
    return totals


if __name__ == "__main__":
    main()
