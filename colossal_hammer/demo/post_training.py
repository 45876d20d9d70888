"""The demo's post-training stages: SFT with LoRA adapters beside the full SFT, DPO on the SFT model, and
category accuracy of the stage-2, SFT, LoRA-SFT and DPO models on held-out headlines.

What the demo chooses, it chooses on the validation questions (demo/preference.py), never on the held-out
ones it reports: LoRA's learning rate (`--lora_lrs` trains one LoRA SFT per candidate and keeps the best)
and the categories the DPO pairs target (those the SFT confuses).

pipeline.py calls these as stages (its Demo runs the commands); everything here is a public command.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from . import preference
from ..errors import InputError
from .accuracy import write_questions


@dataclass
class PostScale:
    dpo_per_category: int  # pairs per category (one headline each)
    dpo_steps: int
    dpo_lr: float
    lora_rank: int
    lora_lr: float


# lora_lr (full): chosen on the 350 validation questions by one full run, `python -m colossal_hammer.demo
# --lora_lrs 2e-3,5e-3,1e-2` (2-core CPU under load): LoRA 0.2657 / 0.2371 / 0.1914 against full SFT's
# 0.6086, so 2e-3 is kept, but no candidate learns the category (chance 0.25): the lr is not what LoRA lacks
# here. At test scale no model learns the category (every candidate scored 0.2380 on 395 validation
# questions, full SFT too), so test keeps 2e-3.
POST_SCALES = {
    "test": PostScale(dpo_per_category=200, dpo_steps=60, dpo_lr=1e-3, lora_rank=8, lora_lr=2e-3),
    "full": PostScale(dpo_per_category=200, dpo_steps=150, dpo_lr=5e-4, lora_rank=8, lora_lr=2e-3),
}
BETA = 0.1


class PostTraining:
    def __init__(self, demo, scale: str, lora_lrs: list = None):
        self.demo = demo
        self.p = POST_SCALES[scale]
        self.lora_lrs = list(lora_lrs or [self.p.lora_lr])
        self.lora_run = "sft_lora"  # the training run whose adapter is the demo's LoRA SFT
        self.figures: dict = {}

    @property
    def out(self) -> Path:
        return self.demo.out

    def _split(self):
        from ..data.corpora import chinese_news

        news = chinese_news()
        return sorted(news), preference.splits(news, self.demo.s.news_per_category, self.p.dpo_per_category)

    def score(self, questions: Path, models: dict, output: Path) -> dict:
        """demo/accuracy.py on `questions` for {name: folder under models/}: its report."""
        d = self.demo
        d.run(sys.executable, "-m", "colossal_hammer.demo.accuracy", "--data", questions, "--sft_dataset",
              self.out / "data" / "sft", "--model", *[f"{k}={self.out / 'models' / v}" for k, v in models.items()],
              "--output", output)
        return json.loads(output.read_text())

    def validation(self, models: dict, tag: str) -> dict:
        """Category accuracy (and confusion) on the validation questions (written once per demo run), to
        validation_{tag}.json."""
        questions = self.out / "corpus" / "validation_questions.jsonl"
        if not questions.is_file():
            categories, parts = self._split()
            write_questions(questions, parts.validation, categories, seed=2)
        return self.score(questions, models, self.out / f"validation_{tag}.json")

    def sft_validation(self) -> dict:
        if not hasattr(self, "_sft_validation"):
            self._sft_validation = self.validation({"sft": "sft"}, "sft")["sft"]
        return self._sft_validation

    def sft_lora(self) -> None:
        """The SFT stage again, same data, steps and NEFTune, with rank-R adapters on the frozen stage-2 model.
        No --lora_modules_to_save: the new vocabulary's rows were trained in stages 1-2 and SFT adds no token.
        With several candidate learning rates, one run each; the best on the validation questions is kept."""
        d = self.demo
        if len(self.lora_lrs) == 1:
            self._train_lora("sft_lora", self.lora_lrs[0])
        else:
            runs = {f"sft_lora_lr{lr:g}": lr for lr in self.lora_lrs}
            for name, lr in runs.items():
                self._train_lora(name, lr)
                d.run(sys.executable, "-m", "colossal_hammer.model.export", "--checkpoint", d.last_step(name),
                      "--output_dir", self.out / "models" / name, "--merge_lora")
            report = self.validation({"sft": "sft", **{name: name for name in runs}}, "lora_lrs")
            sft = self._sft_validation = report["sft"]
            self.lora_run = max(runs, key=lambda name: (report[name]["accuracy"], -runs[name]))
            self.figures["lora_lr_choice"] = {
                "validation_n": sft["n"], "sft": sft["accuracy"], "chosen": runs[self.lora_run],
                "lora": {f"{lr:g}": report[name]["accuracy"] for name, lr in runs.items()}}
            print(f"LoRA learning rate chosen on validation: {json.dumps(self.figures['lora_lr_choice'])}", flush=True)
        for folder, merge in (("sft_lora_adapter", []), ("sft_lora", ["--merge_lora"])):
            d.run(sys.executable, "-m", "colossal_hammer.model.export", "--checkpoint", d.last_step(self.lora_run),
                  "--output_dir", self.out / "models" / folder, *merge)

    def _train_lora(self, name: str, lr: float) -> None:
        d, s = self.demo, self.demo.s
        d.train(name, ["--load_weights_only", d.last_step("stage2")], self.out / "data" / "sft", s.sft_steps, lr,
                "--use_neft", "--padding_mode", "longest", "--lora_rank", self.p.lora_rank,
                "--lora_alpha", 2 * self.p.lora_rank, "--lora_dropout", 0.05)

    def dpo(self) -> None:
        """Pairs from headlines the SFT never saw, in the categories it confuses on the validation questions →
        prepare_preference_dataset.py → train.py --task dpo."""
        d = self.demo
        preference.check_sft_form(self.out / "corpus" / "sft" / "qa.jsonl")
        _, parts = self._split()
        sft = self.sft_validation()
        pairs = preference.pairs(parts.dpo, sft["confusion"])
        if not pairs:
            raise InputError("the SFT model answered every validation question right: DPO has no failure to fix")
        folder = self.out / "corpus" / "dpo"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "pairs.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs),
                                            encoding="utf-8")
        d.run(sys.executable, "prepare_preference_dataset.py", "--data_input_dirs", folder, "--tokenizer_dir",
              self.out / "models" / "extended", "--data_output_dirs", self.out / "data" / "dpo", "--max_length",
              2 * d.s.seq, "--llama_version", 2, "--num_spliced_dataset_bins", 1, "--num_workers", 2, "--overwrite")
        # a row holds both sequences of a pair, each as long as an SFT row may be
        d.train("dpo", ["--load_weights_only", d.last_step("sft")], self.out / "data" / "dpo", self.p.dpo_steps,
                self.p.dpo_lr, "--task", "dpo", "--dpo_loss", "sigmoid", "--beta", BETA, "--padding_mode", "longest",
                "--max_length", 2 * d.s.seq)
        d.run(sys.executable, "-m", "colossal_hammer.model.export", "--checkpoint", d.last_step("dpo"),
              "--output_dir", self.out / "models" / "dpo")
        records = [r for r in map(json.loads, (self.out / "logs" / "dpo" / "metrics.jsonl").read_text().splitlines())
                   if r.get("kind") != "eval"]  # step records only; the held-out evaluations are records too
        errors = {c: sum(row.values()) for c, row in sft["confusion"].items()}
        self.figures["dpo"] = {"pairs": len(pairs), "steps": records[-1]["step"], "first_loss": records[0]["loss"],
                               "last_loss": records[-1]["loss"],
                               "last_reward_accuracy": records[-1].get("rewards/accuracy"),
                               "sft_validation_accuracy": sft["accuracy"], "validation_n": sft["n"],
                               "sft_validation_errors": errors,
                               "categories": sorted(c for c in parts.dpo if errors.get(c))}
        print(f"DPO: {json.dumps(self.figures['dpo'], ensure_ascii=False)}", flush=True)

    def accuracy(self) -> None:
        """Category accuracy of each model; bits per byte and size figures of the LoRA variant."""
        d, c = self.demo, self.out / "corpus"
        categories, parts = self._split()
        questions = c / "category_questions.jsonl"
        write_questions(questions, parts.heldout, categories)
        models = {"stage2": "stage2", "sft": "sft", "sft_lora": "sft_lora", "dpo": "dpo"}
        report = self.score(questions, models, self.out / "category_accuracy.json")
        self.figures["accuracy"] = {k: (report[k]["accuracy"] if k in models else report[k])
                                    for k in ("chance", "n", *models)}
        out = self.out / "eval_sft_lora.json"
        d.run(sys.executable, "-m", "colossal_hammer.eval.perplexity", "--model", self.out / "models" / "sft_lora",
              "--data", f"{c / 'heldout_zh.jsonl'},{c / 'heldout_en.jsonl'}", "--max_length", d.s.seq,
              "--output", out)
        bpb = json.loads(out.read_text())
        info = json.loads((self.out / "logs" / self.lora_run / "run_info.json").read_text())
        full = json.loads((self.out / "logs" / "sft" / "run_info.json").read_text())
        size = lambda folder, pattern: sum(f.stat().st_size for f in folder.glob(pattern))  # noqa: E731
        self.figures["lora"] = {
            "rank": self.p.lora_rank, "lr": self.lora_lrs[0] if len(self.lora_lrs) == 1 else
            self.figures["lora_lr_choice"]["chosen"], "trainable_params": info["trainable_params"], "num_params": info["num_params"],
            "trainable_fraction": info["trainable_params"] / info["num_params"],
            "full_sft_trainable_params": full["trainable_params"],
            "adapter_bytes": size(self.out / "models" / "sft_lora_adapter", "adapter_model*.safetensors"),
            "full_model_bytes": size(self.out / "models" / "sft", "*.safetensors"),
            "zh": bpb["category:zh"]["bits_per_byte"], "en": bpb["category:en"]["bits_per_byte"]}
        print(f"category accuracy on held-out headlines: {json.dumps(self.figures['accuracy'])}", flush=True)
        print(f"LoRA SFT: {json.dumps(self.figures['lora'])}", flush=True)

    def markdown(self, bits_per_byte: dict) -> str:
        """report.md's section: accuracy per model with chance, the DPO run, LoRA against full SFT."""
        if not self.figures:
            return ""
        a, lora, dpo = self.figures["accuracy"], self.figures["lora"], self.figures["dpo"]
        sft = bits_per_byte.get("sft", {})
        names = {"stage2": "base (stage 2)", "sft": "SFT", "sft_lora": "SFT with LoRA", "dpo": "DPO (on SFT)"}
        rows = "\n".join(f"| {label} | {a[k]:.4f} |" for k, label in names.items())
        errors = ", ".join(f"{c} {k}" for c, k in sorted(dpo["sft_validation_errors"].items())) or "none"
        choice = self.figures.get("lora_lr_choice")
        choice = "" if not choice else (
            f"\nLoRA's learning rate, chosen on the {choice['validation_n']} validation questions (full SFT: "
            f"{choice['sft']:.4f}): " + ", ".join(f"{lr} → {acc:.4f}" for lr, acc in choice["lora"].items())
            + f"; kept {choice['chosen']:g}.\n")
        return f"""## Category accuracy on held-out headlines

{a['n']} THUCNews headlines no stage trained on, each with four category names to choose from (chance
{a['chance']:.2f}), scored by the log-likelihood of the SFT's answer "这是一条<类别>新闻。" after its
question (colossal_hammer/demo/accuracy.py).

| model | accuracy |
|---|---|
{rows}
| chance | {a['chance']:.4f} |

DPO: {dpo['pairs']} pairs from the categories the SFT confuses on {dpo['validation_n']} validation questions
(SFT's validation accuracy {dpo['sft_validation_accuracy']:.4f}; wrong answers per category: {errors}), each
preferring the right category to one the SFT wrongly chose for that category (headlines the SFT never
saw), {dpo['steps']} steps, beta {BETA}: loss {dpo['first_loss']:.4f} → {dpo['last_loss']:.4f}, reward
accuracy at the last step {dpo['last_reward_accuracy']}.
{choice}
## SFT with LoRA adapters (rank {lora['rank']}, lr {lora['lr']:g}) beside full SFT

| | full SFT | LoRA SFT |
|---|---|---|
| parameters trained | {lora['full_sft_trainable_params']:,} | {lora['trainable_params']:,} ({100 * lora['trainable_fraction']:.2f} % of {lora['num_params']:,}) |
| on disk | {lora['full_model_bytes'] / 1e6:.2f} MB (model) | {lora['adapter_bytes'] / 1e6:.3f} MB (adapter) |
| bits per byte, held-out Chinese | {sft.get('zh', float('nan')):.4f} | {lora['zh']:.4f} |
| bits per byte, held-out English | {sft.get('en', float('nan')):.4f} | {lora['en']:.4f} |
"""
