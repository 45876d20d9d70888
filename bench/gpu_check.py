"""The GPU acceptance run, one command: every plugin at the largest real shape that fits, next to the planner.

On CUDA (1 or more GPUs) it trains, through torchrun, each plugin (ddp, zero2, zero2_cpu, gemini, 3d tp2, 3d pp2,
moe with ep2) in bf16 and fp16, with and without --use_flash_attn, at TinyLlama's 1.1B shape (Llama-2 7B's with
at least 4 GPUs of 80 GB), and reports tokens/s per GPU, MFU and peak GPU memory (rank 0's, from metrics.jsonl)
beside the planner's prediction for the same flags; each run's loss and gradient norm against ddp's on the same
data; flash-attention varlen and the SDPA block mask against each document run alone, on the same packed rows;
a save, a resume whose losses equal the first run's, and an export; a QLoRA step on the export; and serving
throughput of the export at concurrency 1 and 16. It prints one table and writes gpu_check.json.

--dry_run does the same on this CPU at a tiny shape (gloo, 2 processes): no flash-attention, LoRA on a bf16 base
instead of QLoRA, and fewer rows; every skipped part is named in the table with why.
Usage: python bench/gpu_check.py [--dry_run] [--out DIR] [--steps N] [--plugins ddp zero2 ...] [--budget_s S]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name: (train.py flags, processes it needs, model kind)
PLUGINS = {
    "ddp": (["--plugin", "ddp"], 1, "dense"),
    "zero2": (["--plugin", "zero2"], 1, "dense"),
    "zero2_cpu": (["--plugin", "zero2_cpu"], 1, "dense"),
    "gemini": (["--plugin", "gemini"], 1, "dense"),
    "3d_tp2": (["--plugin", "3d", "--tp", "2"], 2, "dense"),
    "3d_pp2": (["--plugin", "3d", "--pp", "2", "--microbatch_size", "1"], 2, "dense"),
    "moe_ep2": (["--plugin", "moe", "--ep", "2", "--zero_stage", "1"], 2, "moe"),
}
# TinyLlama-1.1B's config.json; its MoE sibling (4 experts, top 2, half the layers) for the moe row.
TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rope_theta=10000.0,
                 rms_norm_eps=1e-5)
TINYLLAMA_MOE = dict(TINYLLAMA, model_type="mixtral", num_hidden_layers=11, num_local_experts=4,
                     num_experts_per_tok=2)
# The planner's device for a CUDA device name (substring); A100s come in two memory sizes.
PLANNER_GPUS = (("H200", "h200-141g"), ("H100", "h100-80g"), ("H800", "h800-80g"), ("A800", "a800-80g"),
                ("L40S", "l40s-48g"), ("4090", "4090-24g"))


def planner_gpu(name: str, memory_gib: float):
    if "A100" in name:
        return "a100-80g" if memory_gib > 60 else "a100-40g"
    return next((g for k, g in PLANNER_GPUS if k in name), None)
# What --dry_run trains: ddp is every loss's reference, and each precision runs once.
DRY_ROWS = {("ddp", "bf16"), ("zero2", "fp16")}
# Loss and gradient norm of a plugin against ddp at the same precision, after the same steps on the same data.
LOSS_TOLERANCE = {"bf16": 2e-2, "fp16": 2e-2}
GRAD_NORM_TOLERANCE = 5e-2


class Report:
    """The table's rows: part, configuration, status (ok, FAIL, skipped), figures and why."""

    def __init__(self):
        self.rows = []
        self.start = time.time()

    def add(self, part: str, config: str, status: str, detail: str = "", **figures) -> dict:
        row = dict(part=part, config=config, status=status, detail=detail, at_s=round(time.time() - self.start, 1),
                   **figures)
        self.rows.append(row)
        print(f"[gpu_check] {part} {config}: {status} {detail}", flush=True)
        return row

    def table(self) -> str:
        lines = [f"{'part':<12} {'config':<28} {'status':<8} detail", "-" * 110]
        lines += [f"{r['part']:<12} {r['config']:<28} {r['status']:<8} {r['detail']}" for r in self.rows]
        return "\n".join(lines)

    @property
    def failed(self) -> bool:
        return any(r["status"] == "FAIL" for r in self.rows)


# ---- the machine and the shape ----------------------------------------------------------------------

def machine(dry_run: bool) -> dict:
    import torch

    cuda = torch.cuda.is_available() and not dry_run
    gpus = torch.cuda.device_count() if cuda else 0
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else 0.0
    return dict(cuda=cuda, gpus=gpus, name=name, memory_gib=memory, torch=torch.__version__,
                flash_attn=cuda and importlib.util.find_spec("flash_attn") is not None,
                bitsandbytes=cuda and importlib.util.find_spec("bitsandbytes") is not None,
                planner_gpu=planner_gpu(name, memory) if cuda else "cpu")


def shape(m: dict, out: Path) -> dict:
    """Model configs, sequence length and batch of the runs: tiny on CPU, TinyLlama 1.1B on a GPU, 7B on 4+ x 80 GB."""
    if not m["cuda"]:
        return dict(name="tiny", dense="tiny", moe="tiny_moe", max_length=64, batch_size=2, nproc=2)
    out.mkdir(parents=True, exist_ok=True)
    moe = out / "tinyllama_moe.json"
    moe.write_text(json.dumps(TINYLLAMA_MOE))
    if m["gpus"] >= 4 and m["memory_gib"] >= 75:
        # batch 2: the 3d pp 2 row needs 2 micro-batches, and every row trains on the same batches as ddp
        return dict(name="llama2-7b", dense="llama2-7b", moe=str(moe), max_length=4096, batch_size=2,
                    nproc=min(m["gpus"], 8))
    dense = out / "tinyllama.json"
    dense.write_text(json.dumps(TINYLLAMA))
    return dict(name="tinyllama-1.1b", dense=str(dense), moe=str(moe), max_length=2048, batch_size=4,
                nproc=min(m["gpus"], 8))


# ---- launching train.py -----------------------------------------------------------------------------

def launch(argv: list, log_dir: Path, nproc: int, timeout: float, module: str = None) -> tuple:
    """Run train.py (or `python -m module`) under torchrun when nproc > 1; returns (exit status, output tail)."""
    runner = ["-m", module] if module else [str(REPO / "train.py")]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *runner]
    else:
        cmd = [sys.executable, *runner]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "output.txt", "w") as log, subprocess.Popen(
            [*cmd, *map(str, argv)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True) as proc:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # every rank goes with the launcher
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = f"timeout after {timeout:.0f} s"
    return code, (log_dir / "output.txt").read_text()[-3000:]


def read_run(log_dir: Path) -> dict:
    lines = [json.loads(x) for x in (log_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in lines if r.get("kind") != "eval"]
    return {"records": records, "info": json.loads((log_dir / "run_info.json").read_text())}


def steady(records: list, key: str):
    """Median of `key` over the steps after the first (which pays for compilation and allocator warm-up)."""
    values = [r[key] for r in records[1:] or records if not r["skipped"] and key in r]
    return statistics.median(values) if values else None


def planner(flags: list, m: dict, nproc: int) -> dict:
    """The planner's prediction for the same flags, or why it has none."""
    from colossal_hammer.errors import InputError
    from colossal_hammer.plan.cli import plan_dict

    if m["planner_gpu"] is None:
        return {"why": f"the planner knows no device named like {m['name']!r}"}
    try:
        plan = plan_dict([*flags, "--gpu", m["planner_gpu"], "--nodes", "1", "--gpus_per_node", str(nproc), "--json"])
    except InputError as e:
        return {"why": str(e)}
    return {"fits": plan["fits"], "why": plan["why"], "memory_gib": plan["memory_gib"]["total"],
            "tokens_per_s_per_gpu": plan["tokens_per_s_per_gpu"], "mfu": plan.get("mfu_effective")}


def relative_difference(run: list, ref: list, key: str) -> float:
    a = {r["step"]: r[key] for r in run if not r["skipped"]}
    b = {r["step"]: r[key] for r in ref if not r["skipped"]}
    both = sorted(set(a) & set(b))
    if not both or not all(math.isfinite(a[s]) and math.isfinite(b[s]) for s in both):
        return float("inf")
    return max(abs(a[s] - b[s]) / max(abs(b[s]), 1e-12) for s in both)


# ---- the parts --------------------------------------------------------------------------------------

class Check:
    def __init__(self, args, m: dict, report: Report):
        self.args, self.m, self.report = args, m, report
        self.out = Path(args.work_dir or args.out).resolve()  # runs, checkpoints, the export
        self.shape = shape(m, self.out)
        self.deadline = time.time() + args.budget_s
        self.runs = {}  # (plugin, precision, flash) -> read_run(...)
        self.ddp_ckpt = None
        self.last_run_s = 60.0  # how long a training row takes, once one has run

    def base_flags(self, kind: str, precision: str, flash: bool, steps: int) -> list:
        s = self.shape
        flags = ["--model_config", s["dense"] if kind == "dense" else s["moe"], "--benchmark", "--num_samples",
                 str(s["batch_size"] * s["nproc"] * (steps + 2)), "--max_length", str(s["max_length"]),
                 "--batch_size", str(s["batch_size"]), "--max_steps", str(steps), "--seed", "42",
                 "--mixed_precision", precision, "--save_interval", "0"]
        if self.m["cuda"]:
            flags += ["--use_grad_checkpoint"] if self.shape["name"] == "llama2-7b" else []
        return flags + (["--use_flash_attn"] if flash else [])

    def time_left(self) -> float:
        return self.deadline - time.time()

    def train_matrix(self) -> None:
        a, m = self.args, self.m
        for plugin in PLUGINS:
            if plugin not in a.plugins:
                self.report.add("train", plugin, "skipped", "not in --plugins")
        for plugin, precision, flash in self.matrix():
            config = f"{plugin} {precision}{' flash' if flash else ''}"
            flags, need, kind = PLUGINS[plugin]
            nproc = self.shape["nproc"]
            if nproc < need:
                self.report.add("train", config, "skipped", f"needs {need} GPUs, {nproc} present")
                continue
            if flash and not m["flash_attn"]:
                why = "no GPU (dry run)" if not m["cuda"] else ("flash-attn is not installed: it cannot travel to "
                                                                 "the lent machine (a CUDA build, no wheel)")
                self.report.add("train", config, "skipped", why)
                continue
            if a.dry_run and (plugin, precision) not in DRY_ROWS:
                self.report.add("train", config, "skipped", "dry run: one row per precision keeps it short")
                continue
            if self.time_left() < self.last_run_s:  # a run started now would end past the budget
                self.report.add("train", config, "skipped", f"time budget (--budget_s {a.budget_s:.0f}) spent")
                continue
            argv = [*self.base_flags(kind, precision, flash, a.steps), *flags]
            if plugin == "ddp" and not flash and self.ddp_ckpt is None:  # the resume check starts from its middle
                argv[argv.index("--save_interval") + 1] = str(max(1, a.steps // 2))
            plan = planner(argv, m, nproc) if kind == "dense" else {"why": "the planner does not plan --plugin moe"}
            if plan.get("fits") is False:
                self.report.add("train", config, "skipped", f"the planner says it does not fit: {plan['why']}")
                continue
            self.train_one(plugin, precision, flash, argv, nproc, config, plan)

    def matrix(self) -> list:
        a = self.args
        rows = [(p, prec, flash) for flash in (True, False) for prec in a.precisions for p in PLUGINS
                if p in a.plugins]
        # The rows that can run first (flash ones only where flash-attn is installed), bf16 first, and ddp first
        # within each: it is the reference of the others' losses.
        runnable_first = (lambda r: not r[2]) if self.m["flash_attn"] else (lambda r: r[2])
        return sorted(rows, key=lambda r: (runnable_first(r), r[1] != "bf16", r[0] != "ddp"))

    def train_one(self, plugin, precision, flash, argv, nproc, config, plan) -> None:
        name = f"{plugin}-{precision}{'-flash' if flash else ''}"
        log_dir, save_dir = self.out / "runs" / name, self.out / "ckpt" / name
        shutil.rmtree(save_dir, ignore_errors=True)
        started = time.time()
        code, tail = launch([*argv, "--save_dir", save_dir, "--tensorboard_dir", log_dir, "--overwrite_checkpoints"],
                            log_dir, nproc, self.args.run_timeout_s)
        self.last_run_s = time.time() - started
        if code != 0:
            self.report.add("train", config, "FAIL", f"train.py exit {code}: {tail.strip().splitlines()[-1:]}",
                            output=tail)
            return
        run = self.runs[(plugin, precision, flash)] = read_run(log_dir)
        records = run["records"]
        losses = [r["loss"] for r in records if not r["skipped"]]
        tps = steady(records, "tokens_per_second")
        mfu = steady(records, "mfu")
        last = records[-1]
        peak = last.get("peak_memory_gib", last.get("peak_host_rss_gib"))
        peak_kind = "GPU" if "peak_memory_gib" in last else "host RSS"
        figures = dict(losses=losses, tokens_per_s_per_gpu=tps / nproc if tps else None, mfu=mfu,
                       peak_memory_gib=peak, peak_memory_kind=peak_kind, planner=plan,
                       skipped_steps=sum(r["skipped"] for r in records), loss_scale=last.get("loss_scale"))
        ok = bool(losses) and all(math.isfinite(x) for x in losses)
        detail = (f"loss {losses[0]:.3f}->{losses[-1]:.3f} " if losses else "no finished step ") + \
                 f"tok/s/GPU {figures['tokens_per_s_per_gpu'] or 0:.0f} " + \
                 (f"MFU {mfu:.1%} " if mfu is not None else "MFU n/a ") + \
                 f"peak {peak_kind} {peak:.2f} GiB"
        if "memory_gib" in plan:
            speed = plan["tokens_per_s_per_gpu"]
            detail += f" (plan {plan['memory_gib']:.2f} GiB, {f'{speed:.0f} tok/s' if speed else 'no speed on cpu'})"
        else:
            detail += f" (plan: {plan['why']})"
        self.report.add("train", config, "ok" if ok else "FAIL", detail, **figures)
        # ddp at the same precision and attention, else ddp bf16 (the dry run's one reference)
        ref_key = next((k for k in (("ddp", precision, flash), ("ddp", "bf16", flash), ("ddp", "bf16", False))
                        if k in self.runs), None)
        if plugin != "ddp" and ref_key is not None:
            ref = self.runs[ref_key]["records"]
            d_loss = relative_difference(records, ref, "loss")
            d_norm = relative_difference(records, ref, "grad_norm")
            good = d_loss <= LOSS_TOLERANCE[precision] and d_norm <= GRAD_NORM_TOLERANCE
            self.report.add("vs_ddp", config, "ok" if good else "FAIL",
                            f"max rel. diff loss {d_loss:.2e} (tolerance {LOSS_TOLERANCE[precision]:.0e}), grad norm "
                            f"{d_norm:.2e} ({GRAD_NORM_TOLERANCE:.0e}) against ddp {ref_key[1]}"
                            f"{' flash' if ref_key[2] else ''}", loss_diff=d_loss, grad_norm_diff=d_norm)
        if plugin == "ddp" and not flash and self.ddp_ckpt is None:
            self.ddp_ckpt = (save_dir, log_dir, argv)
        else:
            shutil.rmtree(save_dir, ignore_errors=True)  # a 1.1B run's checkpoint is ~15 GB: keep only ddp's

    def resume(self) -> None:
        """Train again from the ddp row's middle checkpoint: the steps after it must give the same losses."""
        if self.ddp_ckpt is None:
            self.report.add("resume", "ddp", "skipped", "no ddp run finished")
            return
        save_dir, first_dir, argv = self.ddp_ckpt
        half = max(1, self.args.steps // 2)
        again_dir = self.out / "runs" / "resume"
        code, tail = launch([*argv, "--save_dir", self.out / "ckpt" / "resume", "--tensorboard_dir", again_dir,
                             "--load_checkpoint", save_dir / f"step-{half}", "--overwrite_checkpoints"],
                            again_dir, self.shape["nproc"], self.args.run_timeout_s)
        if code != 0:
            self.report.add("resume", f"ddp from step-{half}", "FAIL", f"exit {code}", output=tail)
            return
        first, again = read_run(first_dir)["records"], read_run(again_dir)["records"]
        a = {r["step"]: r["loss"] for r in first if r["step"] > half and not r["skipped"]}
        b = {r["step"]: r["loss"] for r in again if r["step"] > half and not r["skipped"]}
        equal = bool(a) and a == b
        diff = max((abs(a[s] - b.get(s, float("inf"))) for s in a), default=float("inf"))
        # bit-identical on CPU; on a GPU, atomics in backward may reorder sums
        good = equal or (self.m["cuda"] and diff <= 1e-4 * max(abs(v) for v in a.values()))
        self.report.add("resume", f"ddp from step-{half}", "ok" if good else "FAIL",
                        f"steps {sorted(a)}: losses {'equal' if equal else f'differ by {diff:.2e}'}",
                        first=a, resumed=b, equal=equal)
        shutil.rmtree(self.out / "ckpt" / "resume", ignore_errors=True)

    def export(self) -> Path | None:
        if self.ddp_ckpt is None:
            self.report.add("export", "ddp", "skipped", "no ddp checkpoint")
            return None
        save_dir = self.ddp_ckpt[0]
        step = max((p for p in save_dir.glob("step-*")), key=lambda p: int(p.name.split("-")[1]))
        tokenizer = self.tokenizer()
        target = self.out / "export"
        shutil.rmtree(target, ignore_errors=True)
        code, tail = launch(["--checkpoint", step, "--output_dir", target, "--tokenizer_dir", tokenizer],
                            self.out / "runs" / "export", 1, self.args.run_timeout_s, module="colossal_hammer.model.export")
        files = sorted(p.name for p in target.glob("*")) if target.is_dir() else []
        good = code == 0 and "config.json" in files and any(f.endswith(".safetensors") for f in files)
        self.report.add("export", step.name, "ok" if good else "FAIL",
                        f"{len(files)} files" if good else f"exit {code}", files=files, output=tail if not good else "")
        return target if good else None

    def tokenizer(self) -> Path:
        """A base tokenizer smaller than the model's vocabulary (the random model has none)."""
        from colossal_hammer.data import corpora
        from colossal_hammer.demo import base_tokenizer

        folder = self.out / "tokenizer"
        if not (folder / "tokenizer_config.json").exists():
            base_tokenizer.build_base_tokenizer(corpora.english_paragraphs(), str(folder),
                                                vocab_size=400 if self.shape["dense"] == "tiny" else 2000)
        return folder

    def qlora(self, model: Path | None) -> None:
        m = self.m
        if model is None:
            self.report.add("qlora", "ddp", "skipped", "no export to train on")
            return
        quantize = m["cuda"] and m["bitsandbytes"]
        if m["cuda"] and not quantize:
            self.report.add("qlora", "ddp 4-bit", "skipped", "bitsandbytes is not installed (it did not travel)")
        config = "ddp lora 4-bit NF4 base" if quantize else "ddp lora bf16 base"
        log_dir = self.out / "runs" / "lora"
        argv = ["--pretrained", model, "--benchmark", "--num_samples", "8", "--max_length", str(self.shape["max_length"]),
                "--batch_size", "1", "--max_steps", "2", "--plugin", "ddp", "--lora_rank", "8",
                "--save_dir", self.out / "ckpt" / "lora", "--tensorboard_dir", log_dir, "--overwrite_checkpoints",
                *(["--lora_quantize"] if quantize else [])]
        code, tail = launch(argv, log_dir, 1, self.args.run_timeout_s)
        if code != 0:
            self.report.add("qlora", config, "FAIL", f"exit {code}", output=tail)
            return
        run = read_run(log_dir)
        losses = [r["loss"] for r in run["records"] if not r["skipped"]]
        good = len(losses) == 2 and all(math.isfinite(x) for x in losses) and run["info"]["trainable_params"] < \
            run["info"]["num_params"]
        self.report.add("qlora", config, "ok" if good else "FAIL",
                        f"losses {[round(x, 4) for x in losses]}, trainable {run['info']['trainable_params']} of "
                        f"{run['info']['num_params']}" + ("" if quantize else "; QLoRA itself needs CUDA + bitsandbytes"),
                        losses=losses)

    def serving(self, model: Path | None) -> None:
        if model is None:
            self.report.add("serve", "export", "skipped", "no export to serve")
            return
        from bench.serve_throughput import running_server

        device = "cuda" if self.m["cuda"] else "cpu"
        try:
            with open(self.out / "runs" / "serve.txt", "w") as log, running_server(str(model), device, log) as url:
                self.serve_at(url)
        except SystemExit as e:
            self.report.add("serve", "export", "FAIL", str(e))

    def serve_at(self, url: str) -> None:
        """Generated tokens/s at concurrency 1 and 16 (bench/serve_throughput.py's streaming client)."""
        from bench.serve_throughput import bench_server

        max_tokens = 8 if not self.m["cuda"] else 128
        for concurrency in (1, 16):
            tokens, seconds, firsts = bench_server(url, [f"client {i}: tell me a story." for i in range(concurrency)],
                                                   max_tokens)
            good = len(firsts) == concurrency and tokens > 0
            ttft = statistics.median(firsts) if firsts else float("nan")
            self.report.add("serve", f"concurrency {concurrency}", "ok" if good else "FAIL",
                            f"{tokens / seconds:.1f} generated tok/s, median first token {ttft * 1000:.0f} ms "
                            f"({len(firsts)} requests, {tokens} tokens)", tokens_per_s=tokens / seconds,
                            requests=len(firsts), tokens=tokens)

    def doc_attention(self) -> None:
        """On the same packed rows: the SDPA block mask (and flash varlen where it exists) against each document
        run alone; document masking agrees when every document's logits match its solo run's."""
        import torch
        from transformers import AutoModelForCausalLM

        from colossal_hammer.data.loader import PackedCollator
        from colossal_hammer.model import doc_attention
        from colossal_hammer.model.build import load_config
        from colossal_hammer.model.doc_attention import DocumentAttention

        m = self.m
        device = "cuda" if m["cuda"] else "cpu"
        dtype = torch.bfloat16 if m["cuda"] else torch.float32
        config = load_config(self.shape["dense"])
        torch.manual_seed(0)
        lengths = [[5, 11, 16], [20, 12]] if not m["cuda"] else [[300, 700, 1048], [1024, 1024]]
        g = torch.Generator().manual_seed(0)
        rows = []
        for doc_lengths in lengths:
            ids = torch.randint(3, config.vocab_size, (sum(doc_lengths),), generator=g).tolist()
            rows.append({"input_ids": ids, "labels": ids, "doc_lengths": doc_lengths, "num_padding": 0})
        batch = PackedCollator(pad_id=0)(rows)

        def model_with(implementation):  # a config of its own: HF reads the implementation from it at each call
            with torch.device(device):
                return AutoModelForCausalLM.from_config(copy.deepcopy(config), torch_dtype=dtype,
                                                        attn_implementation=implementation).eval()

        sdpa = model_with("sdpa")
        state = sdpa.state_dict()

        @torch.no_grad()
        def logits(model, spec):
            handle = doc_attention.install(model, spec)
            try:
                b = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
                return model(**b).logits.float()
            finally:
                handle.remove()

        @torch.no_grad()
        def solo(model):  # each document as a row of its own: no mask needed
            out = torch.zeros(len(lengths), max(map(sum, lengths)), config.vocab_size, device=device)
            for r, doc_lengths in enumerate(lengths):
                start = 0
                for n in doc_lengths:
                    ids = batch["input_ids"][r, start:start + n].to(device)[None]
                    out[r, start:start + n] = model(input_ids=ids).logits.float()[0]
                    start += n
            return out

        reference = solo(sdpa)
        scale = reference.abs().max().item()
        tolerance = 1e-4 if dtype == torch.float32 else 5e-2
        cases = {"sdpa block mask": (sdpa, DocumentAttention("mask"))}
        if m["flash_attn"]:
            flash = model_with("flash_attention_2")
            flash.load_state_dict(state)
            cases["flash varlen"] = (flash, DocumentAttention("varlen"))
        else:
            self.report.add("doc_attn", "flash varlen", "skipped",
                            "no GPU (dry run)" if not m["cuda"] else "flash-attn is not installed (cannot travel)")
        for name, (model, spec) in cases.items():
            diff = (logits(model, spec) - reference).abs().max().item() / scale
            self.report.add("doc_attn", name, "ok" if diff <= tolerance else "FAIL",
                            f"max |logits - each document alone| / max|logits| = {diff:.2e} (tolerance {tolerance:.0e})",
                            relative_difference=diff)
        if "flash varlen" in cases:
            diff = (logits(*cases["flash varlen"]) - logits(*cases["sdpa block mask"])).abs().max().item() / scale
            self.report.add("doc_attn", "flash vs sdpa", "ok" if diff <= tolerance else "FAIL", f"{diff:.2e}",
                            relative_difference=diff)


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--dry_run", action="store_true", help="On CPU at a tiny shape (gloo, 2 processes), fewer rows")
    p.add_argument("--out", default="gpu_check_output", help="Folder for runs, checkpoints and gpu_check.json")
    p.add_argument("--work_dir", default=None, help="Folder for the runs' logs, checkpoints and the export "
                                                    "(default: --out); a 1.1B run's checkpoint is ~15 GB")
    p.add_argument("--steps", type=int, default=None, help="Optimizer steps per run (default 6; dry run 4)")
    p.add_argument("--plugins", nargs="+", choices=sorted(PLUGINS), default=None,
                   help="Plugins to train (default all; dry run: ddp zero2, and of those only ddp bf16 and zero2 fp16)")
    p.add_argument("--precisions", nargs="+", choices=("bf16", "fp16"), default=None,
                   help="Precisions to train (default bf16 fp16)")
    p.add_argument("--budget_s", type=float, default=420.0,
                   help="Seconds for the training rows: a row is started only if the last one would still fit; "
                        "those left are listed as skipped")
    p.add_argument("--run_timeout_s", type=float, default=300.0, help="Longest one train.py run may take")
    args = p.parse_args(argv)
    args.steps = args.steps or (4 if args.dry_run else 6)
    if args.steps < 2:
        p.error("--steps must be >= 2 (the resume check restarts from the middle)")
    args.plugins = args.plugins or (["ddp", "zero2"] if args.dry_run else list(PLUGINS))
    args.precisions = args.precisions or ["bf16", "fp16"]
    return args


def main(argv=None) -> int:
    args = parse(argv)
    m = machine(args.dry_run)
    if not m["cuda"] and not args.dry_run:
        print("error: no CUDA device here; run with --dry_run for the CPU rehearsal", file=sys.stderr)
        return 2
    report = Report()
    check = Check(args, m, report)
    check.out.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[gpu_check] {m['name']} x{max(m['gpus'], 1)}, torch {m['torch']}, shape {check.shape['name']}, "
          f"{check.shape['nproc']} processes", flush=True)
    started = time.time()
    check.train_matrix()
    check.doc_attention()
    check.resume()
    model = check.export()
    check.qlora(model)
    check.serving(model)
    result = {"machine": m, "shape": check.shape, "steps": args.steps, "seconds": round(time.time() - started, 1),
              "rows": report.rows}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "gpu_check.txt").write_text(report.table() + "\n")
    print(report.table())
    print(f"{'FAILED' if report.failed else 'passed'} in {result['seconds']:.0f} s; JSON: {out / 'gpu_check.json'}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
