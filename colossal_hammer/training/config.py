"""Training configuration: one dataclass, and the argparse parser generated from it.

Each field is a CLI flag of the same name; its help text lives in the field's metadata so `--help`,
the README and the code cannot drift apart. Names and defaults follow Colossal-LLaMA's train.py where
the two overlap; the few deliberate differences say why in their help.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from typing import List, Optional

PLUGINS = ("ddp", "zero2", "zero2_cpu", "gemini", "gemini_auto", "3d")


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # ---- model ----
    pretrained: Optional[str] = _f(None, "HF-format model folder to continue training from.")
    model_config: Optional[str] = _f(
        None, "Random-init model instead of --pretrained: 'tiny', 'small', or a path to a LlamaConfig JSON."
    )
    # ---- data ----
    benchmark: bool = _f(False, "Train on random tokens (no dataset needed): for rehearsal and throughput figures.")
    num_samples: int = _f(500, "Number of random samples with --benchmark.")
    max_length: int = _f(8192, "Sequence length (tokens per sample).")
    # ---- parallelism ----
    plugin: str = _f("gemini", "Booster plugin.", choices=PLUGINS)
    tp: int = _f(1, "Tensor-parallel size (plugin 3d).")
    pp: int = _f(1, "Pipeline-parallel size (plugin 3d).")
    sp: int = _f(1, "Sequence-parallel size (plugin 3d).")
    zero_stage: int = _f(0, "ZeRO stage inside plugin 3d.", choices=(0, 1, 2))
    sp_mode: str = _f("split_gather", "Sequence-parallel mode (plugin 3d).", choices=("split_gather", "ring", "all_to_all"))
    enable_sequence_parallelism: bool = _f(False, "Enable sequence parallelism (plugin 3d).")
    zero_cpu_offload: bool = _f(False, "Offload ZeRO optimizer states to CPU (plugin 3d, zero_stage >= 1).")
    microbatch_size: int = _f(1, "Pipeline micro-batch size (plugin 3d with pp > 1).")
    mixed_precision: str = _f(
        "bf16",
        "Parameter/compute precision. fp32 is refused by Gemini. Default bf16 (Colossal-LLaMA: fp16) because "
        "it needs no loss scaling and is the precision CPUs compute.",
        choices=("fp16", "bf16", "fp32"),
    )
    # ---- optimisation ----
    optimizer: str = _f("hybrid_adam", "HybridAdam (Colossal-AI, required by Gemini) or torch AdamW.", choices=("hybrid_adam", "adamw"))
    lr: float = _f(3e-4, "Peak learning rate.")
    weight_decay: float = _f(0.1, "AdamW weight decay; never applied to norms, biases or embeddings' norms.")
    warmup_steps: Optional[int] = _f(None, "Linear warmup steps; default 2.5%% of the optimizer steps.")
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this value (0 disables).")
    batch_size: int = _f(2, "Samples per data-parallel rank per micro-step.")
    accumulation_steps: int = _f(1, "Micro-steps per optimizer step (gradient accumulation).")
    num_epochs: int = _f(1, "Passes over the data.")
    max_steps: Optional[int] = _f(None, "Stop after this many optimizer steps (the schedule still spans all epochs).")
    use_grad_checkpoint: bool = _f(False, "Recompute activations in backward to save memory.")
    use_flash_attn: bool = _f(False, "Use flash attention where the plugin and model support it (GPU only).")
    seed: int = _f(42, "Seed for model init, data order and every RNG.")
    # ---- output ----
    tensorboard_dir: str = _f("logs_dir", "TensorBoard logs; metrics.jsonl and config.json are written here too.")
    log_interval: int = _f(1, "Log every N optimizer steps.")

    @property
    def metrics_path(self) -> str:
        return f"{self.tensorboard_dir}/metrics.jsonl"

    def validate(self) -> None:
        if (self.pretrained is None) == (self.model_config is None):
            raise SystemExit("error: give exactly one of --pretrained DIR or --model_config tiny|small|<json>")
        if not self.benchmark:
            raise SystemExit("error: no dataset given; pass --benchmark to train on random tokens")
        if self.plugin != "3d" and (self.tp, self.pp, self.sp, self.zero_stage) != (1, 1, 1, 0):
            raise SystemExit(f"error: --tp/--pp/--sp/--zero_stage need --plugin 3d (got --plugin {self.plugin})")
        if self.plugin.startswith("gemini") and self.mixed_precision == "fp32":
            raise SystemExit("error: Gemini trains in fp16 or bf16 only; use --mixed_precision bf16")
        if self.plugin == "3d" and self.zero_stage > 0 and self.mixed_precision == "fp32":
            raise SystemExit("error: --plugin 3d with --zero_stage > 0 trains in fp16 or bf16 only; use --mixed_precision bf16")
        for name in ("batch_size", "accumulation_steps", "num_epochs", "max_length", "microbatch_size"):
            if getattr(self, name) < 1:
                raise SystemExit(f"error: --{name} must be >= 1")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def build_parser(cls=TrainConfig, description: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        flag = f"--{f.name}"
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", default=f.default, help=meta["help"])
            continue
        kind = {"int": int, "float": float, "str": str}[f.type.removeprefix("Optional[").rstrip("]")]
        parser.add_argument(flag, type=kind, default=f.default, help=meta["help"], choices=meta.get("choices"))
    return parser


def parse_config(argv: Optional[List[str]] = None) -> TrainConfig:
    parser = build_parser(description="Continual pretraining / SFT of Llama models on Colossal-AI Booster plugins.")
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    cfg.validate()
    return cfg
