"""The demo's post-training stages: SFT with LoRA adapters beside the full SFT, DPO on the SFT model, and
category accuracy of the stage-2, SFT, LoRA-SFT and DPO models on held-out headlines.

pipeline.py calls these as stages (its Demo runs the commands); everything here is a public command.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from . import preference
from .accuracy import write_questions


@dataclass
class PostScale:
    dpo_per_category: int  # pairs per category (one headline each)
    dpo_steps: int
    dpo_lr: float
    lora_rank: int
    lora_lr: float


POST_SCALES = {
    "test": PostScale(dpo_per_category=200, dpo_steps=60, dpo_lr=1e-3, lora_rank=8, lora_lr=2e-3),
    "full": PostScale(dpo_per_category=200, dpo_steps=150, dpo_lr=5e-4, lora_rank=8, lora_lr=2e-3),
}
BETA = 0.1


class PostTraining:
    def __init__(self, demo, scale: str):
        self.demo = demo
        self.p = POST_SCALES[scale]
        self.figures: dict = {}

    @property
    def out(self) -> Path:
        return self.demo.out

    def _split(self):
        from ..data.corpora import chinese_news

        news = chinese_news()
        dpo, heldout = preference.splits(news, self.demo.s.news_per_category, self.p.dpo_per_category)
        return sorted(news), dpo, heldout

    def sft_lora(self) -> None:
        """The SFT stage again, same data, steps and NEFTune, with rank-R adapters on the frozen stage-2 model.
        No --lora_modules_to_save: the new vocabulary's rows were trained in stages 1-2 and SFT adds no token."""
        d, s = self.demo, self.demo.s
        d.train("sft_lora", ["--load_weights_only", d.last_step("stage2")], self.out / "data" / "sft", s.sft_steps,
                self.p.lora_lr, "--use_neft", "--padding_mode", "longest", "--lora_rank", self.p.lora_rank,
                "--lora_alpha", 2 * self.p.lora_rank, "--lora_dropout", 0.05)
        for folder, merge in (("sft_lora_adapter", []), ("sft_lora", ["--merge_lora"])):
            d.run(sys.executable, "-m", "colossal_hammer.model.export", "--checkpoint", d.last_step("sft_lora"),
                  "--output_dir", self.out / "models" / folder, *merge)

    def dpo(self) -> None:
        """Pairs from headlines the SFT never saw → prepare_preference_dataset.py → train.py --task dpo."""
        d = self.demo
        preference.check_sft_form(self.out / "corpus" / "sft" / "qa.jsonl")
        categories, dpo_texts, _ = self._split()
        pairs = preference.pairs(dpo_texts, categories)
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
        self.figures["dpo"] = {"pairs": len(pairs), "steps": records[-1]["step"], "first_loss": records[0]["loss"],
                               "last_loss": records[-1]["loss"],
                               "last_reward_accuracy": records[-1].get("rewards/accuracy")}

    def accuracy(self) -> None:
        """Category accuracy of each model; bits per byte and size figures of the LoRA variant."""
        d, c = self.demo, self.out / "corpus"
        categories, _, heldout = self._split()
        questions = c / "category_questions.jsonl"
        write_questions(questions, heldout, categories)
        models = {"stage2": "stage2", "sft": "sft", "sft_lora": "sft_lora", "dpo": "dpo"}
        d.run(sys.executable, "-m", "colossal_hammer.demo.accuracy", "--data", questions, "--sft_dataset",
              self.out / "data" / "sft", "--model", *[f"{k}={self.out / 'models' / v}" for k, v in models.items()],
              "--output", self.out / "category_accuracy.json")
        report = json.loads((self.out / "category_accuracy.json").read_text())
        self.figures["accuracy"] = {k: (report[k]["accuracy"] if k in models else report[k])
                                    for k in ("chance", "n", *models)}
        out = self.out / "eval_sft_lora.json"
        d.run(sys.executable, "-m", "colossal_hammer.eval.perplexity", "--model", self.out / "models" / "sft_lora",
              "--data", f"{c / 'heldout_zh.jsonl'},{c / 'heldout_en.jsonl'}", "--max_length", d.s.seq,
              "--output", out)
        bpb = json.loads(out.read_text())
        info = json.loads((self.out / "logs" / "sft_lora" / "run_info.json").read_text())
        full = json.loads((self.out / "logs" / "sft" / "run_info.json").read_text())
        size = lambda folder, pattern: sum(f.stat().st_size for f in folder.glob(pattern))  # noqa: E731
        self.figures["lora"] = {
            "rank": self.p.lora_rank, "trainable_params": info["trainable_params"], "num_params": info["num_params"],
            "trainable_fraction": info["trainable_params"] / info["num_params"],
            "full_sft_trainable_params": full["trainable_params"],
            "adapter_bytes": size(self.out / "models" / "sft_lora_adapter", "adapter_model*.safetensors"),
            "full_model_bytes": size(self.out / "models" / "sft", "*.safetensors"),
            "zh": bpb["category:zh"]["bits_per_byte"], "en": bpb["category:en"]["bits_per_byte"]}

    def markdown(self, bits_per_byte: dict) -> str:
        """report.md's section: accuracy per model with chance, the DPO run, LoRA against full SFT."""
        if not self.figures:
            return ""
        a, lora, dpo = self.figures["accuracy"], self.figures["lora"], self.figures["dpo"]
        sft = bits_per_byte.get("sft", {})
        names = {"stage2": "base (stage 2)", "sft": "SFT", "sft_lora": "SFT with LoRA", "dpo": "DPO (on SFT)"}
        rows = "\n".join(f"| {label} | {a[k]:.4f} |" for k, label in names.items())
        return f"""## Category accuracy on held-out headlines

{a['n']} THUCNews headlines no stage trained on, each with four category names to choose from (chance
{a['chance']:.2f}), scored by the log-likelihood of the SFT's answer "这是一条<类别>新闻。" after its
question (colossal_hammer/demo/accuracy.py).

| model | accuracy |
|---|---|
{rows}
| chance | {a['chance']:.4f} |

DPO: {dpo['pairs']} pairs (right vs wrong category, headlines the SFT never saw), {dpo['steps']} steps,
beta {BETA}: loss {dpo['first_loss']:.4f} → {dpo['last_loss']:.4f}, reward accuracy at the last step
{dpo['last_reward_accuracy']}.

## SFT with LoRA adapters (rank {lora['rank']}) beside full SFT

| | full SFT | LoRA SFT |
|---|---|---|
| parameters trained | {lora['full_sft_trainable_params']:,} | {lora['trainable_params']:,} ({100 * lora['trainable_fraction']:.2f} % of {lora['num_params']:,}) |
| on disk | {lora['full_model_bytes'] / 1e6:.2f} MB (model) | {lora['adapter_bytes'] / 1e6:.3f} MB (adapter) |
| bits per byte, held-out Chinese | {sft.get('zh', float('nan')):.4f} | {lora['zh']:.4f} |
| bits per byte, held-out English | {sft.get('en', float('nan')):.4f} | {lora['en']:.4f} |
"""
