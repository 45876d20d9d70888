"""Training configuration: sections of flags, each a dataclass that checks its own fields, and TrainConfig, which
is all of them (flat: `cfg.lr`, `cfg.plugin`) plus the rules between sections.

Each field is a CLI flag of the same name; its help text lives in the field's metadata so `--help` (grouped by
section), the README and the code cannot drift apart. Names and defaults follow Colossal-LLaMA's train.py where
the two overlap; the few deliberate differences say why in their help. Every refusal is an InputError: one
line, which train.py prints from rank 0 as `error: ...` with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from typing import List, Optional

from ..errors import InputError

PLUGINS = ("ddp", "zero2", "zero2_cpu", "gemini", "gemini_auto", "3d", "moe")
SCHEDULES = ("cosine", "wsd", "constant", "linear")  # training/schedule.py
DECAY_SHAPES = ("1-sqrt", "linear", "cosine")
ROPE_SCALINGS = ("linear", "dynamic", "yarn", "llama3")  # model/rope.py


def flag(default, help, **kw):
    """A config field: its default, and the help that --help and the README show (PlanConfig's fields too)."""
    return field(default=default, metadata={"help": help, **kw})


def _at_least(section, low, *names) -> None:
    for name in names:
        if getattr(section, name) < low:
            raise InputError(f"--{name} must be >= {low} (got {getattr(section, name)})")


@dataclass
class ModelSection:
    """What is trained: the weights or shape it starts from."""
    SECTION = "model"

    pretrained: Optional[str] = flag(None, "HF-format model folder to continue training from.")
    model_config: Optional[str] = flag(
        None, "Random-init model instead of --pretrained: 'tiny', 'small', a published shape ('llama2-7b', "
              "'llama2-13b', 'llama2-70b', 'llama3-8b', 'llama3-70b'), a mixture of experts ('tiny_moe': top-2 of 4 "
              "experts; 'mixtral-8x7b'), a tiny model of another family ('tiny_qwen2', 'tiny_qwen2_tied', "
              "'tiny_qwen3', 'tiny_mistral', 'tiny_llama3'), or a path to a config JSON: a LlamaConfig, or with "
              "\"model_type\" \"qwen2\", \"qwen3\", \"mistral\" or \"mixtral\" that family's config."
    )
    load_weights_only: Optional[str] = flag(
        None, "Start a new stage from these weights (a checkpoint step-N folder or an HF folder), with a fresh "
              "optimizer, schedule and step 0.")
    freeze_non_embeds_params: bool = flag(False, "Train only the input embeddings and lm_head (vocabulary stage 1).")
    rope_theta: Optional[float] = flag(None, "Long-context stage: a new RoPE base (e.g. 1e6, Code Llama's), set on the "
                                             "model's config before it is built; checkpoints and exports keep it.")
    rope_scaling: Optional[str] = flag(
        None, "Long-context stage: scale RoPE positions by --rope_factor (position interpolation 'linear', NTK "
              "'dynamic', 'yarn', Llama 3.1's 'llama3'); written into config.json as transformers' rope_scaling.",
        choices=ROPE_SCALINGS)
    rope_factor: Optional[float] = flag(None, "With --rope_scaling: new context / the model's context (e.g. 4).")

    def check(self) -> None:
        if sum(x is not None for x in (self.pretrained, self.model_config, self.load_weights_only)) != 1:
            raise InputError("give exactly one of --pretrained DIR, --model_config tiny|small|<json> "
                             "or --load_weights_only DIR")
        if (self.rope_scaling is None) != (self.rope_factor is None):
            raise InputError("--rope_scaling and --rope_factor go together: give both or neither")
        if self.rope_factor is not None and self.rope_factor <= 1:
            raise InputError(f"--rope_factor must be > 1 (got {self.rope_factor})")
        if self.rope_theta is not None and self.rope_theta <= 0:
            raise InputError(f"--rope_theta must be > 0 (got {self.rope_theta})")


@dataclass
class DataSection:
    """What it trains on."""
    SECTION = "data"

    dataset: Optional[List[str]] = flag(None, "Prepared dataset folders (prepare_*_dataset.py output); several allowed.")
    category_weights: Optional[str] = flag(None, "Sampling weights per category, e.g. 'english=0.5,体育=2'.")
    benchmark: bool = flag(False, "Train on random tokens (no dataset needed): for rehearsal and throughput figures.")
    num_samples: int = flag(500, "Number of random samples with --benchmark.")
    max_length: int = flag(8192, "Sequence length: of random samples; a dataset prepared with a larger --max_length is "
                               "refused at start.")
    padding_mode: str = flag("longest", "Pad unpacked (SFT) rows to the batch's longest row or to --max_length.",
                           choices=("longest", "max_length"))

    def weights_by_category(self) -> dict:
        weights = {}
        for item in filter(None, (self.category_weights or "").split(",")):
            name, _, value = item.rpartition("=")
            try:
                weights[name] = float(value)
            except ValueError:
                raise InputError(f"--category_weights: {item!r} is not NAME=NUMBER") from None
        return weights

    def check(self) -> None:
        if bool(self.benchmark) == bool(self.dataset):
            raise InputError("give --dataset DIR [DIR ...] or --benchmark (random tokens), not both")
        if self.max_length < 2:
            raise InputError("--max_length must be >= 2 (a token and the next one to predict)")
        _at_least(self, 0, "num_samples")
        self.weights_by_category()


@dataclass
class TaskSection:
    """The objective: language modelling or preference optimisation (DPO and its relatives)."""
    SECTION = "task"

    task: str = flag("lm", "What to train: 'lm' the next-token loss on labelled tokens (pretraining and SFT datasets); "
                         "'dpo' preference optimisation on a prepare_preference_dataset.py dataset.",
                   choices=("lm", "dpo"))
    dpo_loss: str = flag("sigmoid", "DPO loss (--task dpo): sigmoid (DPO), ipo, simpo or orpo (these two use no "
                                  "reference model).", choices=("sigmoid", "ipo", "simpo", "orpo"))
    beta: float = flag(0.1, "DPO beta (--task dpo): how far the policy may move from the reference; for orpo the "
                          "weight of the odds-ratio term.")
    simpo_gamma: float = flag(0.5, "SimPO target reward margin gamma (--dpo_loss simpo).")

    def check(self) -> None:
        if self.beta <= 0:
            raise InputError(f"--beta must be > 0 (got {self.beta})")


@dataclass
class EvalSection:
    """Held-out sets scored while training (eval/in_training.py)."""
    SECTION = "evaluation"

    eval_dataset: Optional[List[str]] = flag(
        None, "Held-out prepared datasets as NAME=DIR (several allowed): loss and bits per byte of each, and of each "
              "of its categories, logged as eval/NAME/... every --eval_interval steps and at the end.")
    eval_interval: int = flag(0, "Evaluate the --eval_dataset sets every N optimizer steps (0: only at the end).")
    eval_max_tokens: int = flag(0, "Score whole rows of each category of each eval set until it has this many tokens "
                                 "(0: every row): a small figure keeps evaluation cheap.")
    eval_tokenizer_dir: Optional[str] = flag(
        None, "Tokenizer the eval sets were prepared with, whose tokens' bytes give bits per byte (default: the "
              "model folder's own; needed with --model_config).")

    def eval_sets(self) -> List[tuple]:
        """(NAME, DIR) pairs of --eval_dataset; a malformed item is refused in one line."""
        sets, seen = [], set()
        for item in self.eval_dataset or []:
            name, sep, folder = item.partition("=")
            if not sep or not name or not folder:
                raise InputError(f"--eval_dataset {item}: give NAME=DIR, e.g. heldout_zh=data/heldout_zh")
            if "/" in name or name in seen:
                what = "contains '/'" if "/" in name else "is given twice"
                raise InputError(f"--eval_dataset {item}: the name {name!r} {what}; names label the metrics "
                                 "eval/NAME/..., give each set its own name without '/'")
            seen.add(name)
            sets.append((name, folder))
        return sets

    def check(self) -> None:
        _at_least(self, 0, "eval_interval", "eval_max_tokens")
        if not self.eval_dataset and (self.eval_interval or self.eval_max_tokens or self.eval_tokenizer_dir):
            raise InputError("--eval_interval/--eval_max_tokens/--eval_tokenizer_dir need --eval_dataset NAME=DIR")
        self.eval_sets()


@dataclass
class ParallelSection:
    """The Booster plugin, its layout and precision."""
    SECTION = "parallelism"

    plugin: str = flag("gemini", "Booster plugin.", choices=PLUGINS)
    tp: int = flag(1, "Tensor-parallel size (plugins 3d and moe).")
    pp: int = flag(1, "Pipeline-parallel size (plugin 3d).")
    sp: int = flag(1, "Sequence-parallel size (plugin 3d).")
    ep: int = flag(1, "Expert-parallel size (plugin moe): each layer's experts are split over this many "
                    "data-parallel ranks.")
    zero_stage: int = flag(0, "ZeRO stage inside plugins 3d and moe (moe: 0 or 1; 1 is needed with --ep > 1).",
                         choices=(0, 1, 2))
    sp_mode: str = flag("split_gather", "Sequence-parallel mode (plugin 3d).", choices=("split_gather", "ring", "all_to_all"))
    enable_sequence_parallelism: bool = flag(False, "Enable sequence parallelism (plugin 3d).")
    zero_cpu_offload: bool = flag(False, "Offload ZeRO optimizer states to CPU (plugins 3d and moe, zero_stage >= 1).")
    microbatch_size: int = flag(1, "Pipeline micro-batch size (plugin 3d with pp > 1).")
    mixed_precision: str = flag(
        "bf16",
        "Parameter/compute precision. fp32 is refused by Gemini. Default bf16 (Colossal-LLaMA: fp16) because "
        "it needs no loss scaling and is the precision CPUs compute.",
        choices=("fp16", "bf16", "fp32"),
    )
    initial_loss_scale: float = flag(
        2.0**16, "fp16: the dynamic loss scale to start from (Colossal-AI's default 65536). Steps whose gradients "
        "overflow are skipped and the scale halved (every second overflow under Colossal-AI's plugins), without "
        "counting as bad steps until the scale reaches 1.")

    def check(self) -> None:
        if not 1 <= self.initial_loss_scale <= 2.0**32:
            raise InputError(f"--initial_loss_scale {self.initial_loss_scale}: must be from 1 (the scaler's floor) to "
                             "2**32 = 4294967296 (its ceiling)")
        if self.plugin not in ("3d", "moe") and (self.tp, self.pp, self.sp, self.zero_stage) != (1, 1, 1, 0):
            raise InputError(f"--tp/--pp/--sp/--zero_stage need --plugin 3d or moe (got --plugin {self.plugin})")
        if self.ep < 1 or (self.ep > 1 and self.plugin != "moe"):
            raise InputError(f"--ep {self.ep}: an expert-parallel size >= 1, and above 1 only with --plugin moe")
        if self.plugin.startswith("gemini") and self.mixed_precision == "fp32":
            raise InputError("Gemini trains in fp16 or bf16 only; use --mixed_precision bf16")
        if self.plugin == "3d" and self.zero_stage > 0 and self.mixed_precision == "fp32":
            raise InputError("--plugin 3d with --zero_stage > 0 trains in fp16 or bf16 only; use --mixed_precision bf16")
        _at_least(self, 1, "microbatch_size")


@dataclass
class MoESection:
    """The router's loss terms of MoE models (moe/router.py)."""
    SECTION = "mixture of experts"

    router_aux_loss_coef: float = flag(0.02, "Weight of the router's load-balancing loss in the optimised loss (MoE "
                                           "models; Mixtral's 0.02).")
    router_z_loss_coef: float = flag(0.0, "Weight of the router z-loss (ST-MoE: mean squared logsumexp of the router "
                                        "logits; MoE models; 0 turns it off).")

    def check(self) -> None:
        if self.router_aux_loss_coef < 0 or self.router_z_loss_coef < 0:
            raise InputError("--router_aux_loss_coef and --router_z_loss_coef must be >= 0")


@dataclass
class OptimSection:
    """Optimizer, batch, steps and what guards them."""
    SECTION = "optimisation"

    optimizer: str = flag("hybrid_adam", "HybridAdam (Colossal-AI, required by Gemini) or torch AdamW.", choices=("hybrid_adam", "adamw"))
    lr: float = flag(3e-4, "Peak learning rate.")
    weight_decay: float = flag(0.1, "AdamW weight decay on matrices (embeddings and lm_head included); never on "
                                  "1-D tensors (norms, biases).")
    grad_clip: float = flag(1.0, "Clip the global gradient norm to this value (0 disables).")
    batch_size: int = flag(2, "Samples per data-parallel rank per micro-step.")
    accumulation_steps: int = flag(1, "Micro-steps per optimizer step (gradient accumulation).")
    num_epochs: int = flag(1, "Passes over the data.")
    max_steps: Optional[int] = flag(None, "Stop after this many optimizer steps (the schedule still spans all epochs).")
    use_grad_checkpoint: bool = flag(False, "Recompute activations in backward to save memory.")
    use_flash_attn: bool = flag(False, "Use flash attention where the plugin and model support it (GPU only).")
    use_neft: bool = flag(False, "NEFTune: uniform noise on input embeddings while training.")
    neft_alpha: float = flag(5.0, "NEFTune alpha; noise scale alpha/sqrt(L*d) with L each sample's real length.")
    seed: int = flag(42, "Seed for model init, data order and every RNG.")
    max_bad_steps: int = flag(5, "Skip steps whose loss is NaN/inf; stop (with a checkpoint) after this many in a row.")
    peak_tflops: Optional[float] = flag(None, "Peak TFLOPS of one device for MFU (default: the GPU's known peak; none on CPU).")

    def check(self) -> None:
        _at_least(self, 1, "batch_size", "accumulation_steps", "num_epochs", "max_bad_steps")
        _at_least(self, 0, "lr", "weight_decay", "grad_clip")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError("--max_steps must be >= 1")
        if self.use_neft and self.neft_alpha <= 0:
            raise InputError("--neft_alpha must be > 0 with --use_neft")


@dataclass
class ScheduleSection:
    """The learning-rate schedule."""
    SECTION = "schedule"

    lr_schedule: str = flag(
        "cosine", "After the warmup: cosine or linear decay to --min_lr_ratio x --lr over all epochs' steps "
                  "(--max_steps stops early without moving it), constant, or wsd (warmup-stable-decay: stable at "
                  "--lr, then the last --decay_fraction of the run's steps, up to --max_steps, decay; a larger "
                  "--max_steps on resume extends the stable phase).", choices=SCHEDULES)
    warmup_steps: Optional[int] = flag(None, "Linear warmup steps, counted again by every stage; default 2.5%% of the "
                                             "steps the schedule spans.")
    min_lr_ratio: float = flag(0.1, "Where the decay ends, as a share of --lr (not used by constant).")
    decay_fraction: float = flag(0.2, "wsd: the share of the run's steps that decay (1.0: decay from the first step "
                                      "after the warmup, e.g. a decay stage branched off a stable checkpoint).")
    decay_shape: str = flag("1-sqrt", "wsd: the decay's shape; 1-sqrt did best in Hägele et al. 2024.",
                            choices=DECAY_SHAPES)

    def check(self) -> None:
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise InputError("--warmup_steps must be >= 0")
        for name in ("min_lr_ratio", "decay_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"--{name} must be between 0 and 1 (got {getattr(self, name)})")


@dataclass
class LoRASection:
    """Adapters on a frozen base (adapters/lora.py)."""
    SECTION = "LoRA"

    lora_rank: Optional[int] = flag(None, "Train LoRA adapters of this rank (1 or more) on a frozen base; without "
                                        "the flag every weight trains. Plugins ddp, zero2, zero2_cpu.")
    lora_alpha: float = flag(16.0, "LoRA scaling numerator: the update is (alpha / rank) * B @ A.")
    lora_dropout: float = flag(0.05, "Dropout on the LoRA branch's input.")
    lora_target_modules: str = flag("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                                  "Modules that get adapters (default: every linear layer of the Llama blocks).")
    lora_modules_to_save: Optional[str] = flag(
        None, "Modules trained in full beside the adapters and saved with them, e.g. 'embed_tokens,lm_head' after "
              "a vocabulary extension, so that the new rows train.")
    lora_quantize: bool = flag(False, "QLoRA: the frozen base in 4-bit NF4 (bitsandbytes, Colossal-AI's quantize=True); "
                                    "CUDA only.")

    def check(self) -> None:
        if self.lora_rank is not None and self.lora_rank < 1:
            raise InputError(f"--lora_rank {self.lora_rank}: a LoRA rank is 1 or more; leave the flag out to "
                             "train every weight")
        if self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise InputError("--lora_alpha must be > 0 and --lora_dropout in [0, 1)")


@dataclass
class CheckpointSection:
    """Where and how often the run saves, and what it resumes."""
    SECTION = "checkpoints"

    save_dir: str = flag("checkpoint_dir", "Checkpoints go to SAVE_DIR/step-N/.")
    save_interval: int = flag(1000, "Save every N optimizer steps (0: only at the end).")
    keep_last: int = flag(0, "Keep only the newest K checkpoints (0 keeps all).")
    checkpoint_shard_size: float = flag(1024.0, "Largest checkpoint file in MB (weights, optimizer states, masters): "
                                          "what a rank holds in memory at most while it saves.")
    optimizer_checkpoint: str = flag(
        "per_rank", "per_rank: each rank writes the optimizer states it owns (nothing gathered; resumes on the same "
                    "plugin flags and number of processes). gathered: the Booster gathers them into one set of "
                    "files that resumes on another number of processes. ddp always writes rank 0's copy.",
        choices=("per_rank", "gathered"))
    load_checkpoint: Optional[str] = flag(None, "Resume the full state (model, optimizer, schedule, data position, RNG) from a step-N folder.")
    resume: Optional[str] = flag(None, "'auto': resume from the newest complete checkpoint in --save_dir (a damaged "
                                     "newer one is reported and passed over); start at step 0 if there is none.",
                               choices=("auto",))
    overwrite_checkpoints: bool = flag(False, "Start a new run in a --save_dir (and --tensorboard_dir) that holds an "
                                            "earlier run's checkpoints (and metrics): delete them first. Without it "
                                            "such a run is refused, so two runs never mix.")

    def check(self) -> None:
        if self.load_checkpoint and self.resume:
            raise InputError("--load_checkpoint and --resume auto are alternatives; give one")
        _at_least(self, 0, "save_interval", "keep_last")
        if not self.checkpoint_shard_size > 0:
            raise InputError(f"--checkpoint_shard_size must be > 0 MB (got {self.checkpoint_shard_size})")


@dataclass
class LoggingSection:
    """What the run writes besides checkpoints."""
    SECTION = "logging"

    tensorboard_dir: Optional[str] = flag(None, "Log folder: TensorBoard events, metrics.jsonl, config.json, run_info.json, and "
                                              "W&B's offline files and MLflow's local store (--report_to). "
                                              "Default: SAVE_DIR/logs, so each stage has its own.")
    report_to: str = flag("tensorboard", "Where the scalars, eval figures and config go besides metrics.jsonl: a comma-"
                                         "separated list of tensorboard, wandb (offline without an API key; "
                                         "WANDB_MODE wins), mlflow (MLFLOW_TRACKING_URI, else a SQLite store in the "
                                         "log folder), or none. A resumed run continues the same W&B / MLflow run.")
    project: str = flag("colossal_hammer", "W&B project and MLflow experiment of --report_to wandb/mlflow.")
    run_name: Optional[str] = flag(None, "Name of the W&B / MLflow run (default: the --save_dir folder's name).")
    plan: bool = flag(False, "Print the plan of this run (memory per device, fit, speed: python -m colossal_hammer.plan, "
                           "which also takes --gpu --nodes --gpus_per_node --tokens ...) and exit without training.")

    def check(self) -> None:  # tensorboard_dir's default (SAVE_DIR/logs) needs the checkpoint section: validate sets it
        from .trackers import check_environment, names_of

        check_environment(names_of(self.report_to))


SECTIONS = (ModelSection, DataSection, TaskSection, EvalSection, ParallelSection, MoESection, OptimSection,
            ScheduleSection, LoRASection, CheckpointSection, LoggingSection)


@dataclass
class TrainConfig(LoggingSection, CheckpointSection, LoRASection, ScheduleSection, OptimSection, MoESection,
                  ParallelSection, EvalSection, TaskSection, DataSection, ModelSection):  # fields in SECTIONS' order
    """Every train.py flag. Sections check their own fields; validate() adds the rules that span sections."""

    def validate(self) -> None:
        for f in dataclasses.fields(self):  # `x < 0` is False for NaN: every range check would pass it
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(f"--{f.name} {value}: give a finite number")  # errors.check_finite's words
        for section in SECTIONS:
            section.check(self)
        if self.load_weights_only and self.load_checkpoint:
            raise InputError("--load_weights_only starts a new stage; --load_checkpoint resumes one: give one")
        if self.task == "dpo":
            self._validate_dpo()
        if self.tensorboard_dir is None:
            self.tensorboard_dir = os.path.join(self.save_dir, "logs")

    def _validate_dpo(self) -> None:
        """What --task dpo cannot combine with, refused before anything starts."""
        if not self.dataset:
            raise InputError("--task dpo: give --dataset DIR made by prepare_preference_dataset.py (random "
                             "tokens hold no preference pairs)")
        if self.use_neft:
            raise InputError("--task dpo with --use_neft: noisy embeddings would make the policy differ from "
                             "its reference at step 0; drop --use_neft")
        if self.enable_sequence_parallelism:
            raise InputError("--task dpo with --enable_sequence_parallelism: a pair's log-probs are summed "
                             "over whole sequences; use --tp/--pp without sequence parallelism")
        if self.plugin == "3d" and self.use_flash_attn:
            raise InputError("--task dpo --plugin 3d --use_flash_attn: Colossal-AI's flash attention lets the "
                             "rejected sequence see the chosen one in their shared row; drop --use_flash_attn")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def _section_of(cls, name: str):
    """The class in cls's hierarchy that declares the field `name` (its section)."""
    return next(c for c in cls.__mro__ if name in c.__dict__.get("__annotations__", {}))


def build_parser(cls=TrainConfig, description: str = "", prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The flags of every field of cls, in one argument group per section (as --help shows them)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    groups = {}
    for f in dataclasses.fields(cls):
        section = _section_of(cls, f.name)
        if section not in groups:
            groups[section] = parser.add_argument_group(getattr(section, "SECTION", section.__name__),
                                                        section.__doc__)
        group, meta, flag_name, kind = groups[section], dict(f.metadata), f"--{f.name}", hints[f.name]
        if typing.get_origin(kind) is typing.Union:  # Optional[X] -> X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind is bool:
            group.add_argument(flag_name, action="store_true", default=f.default, help=meta["help"])
        elif typing.get_origin(kind) is list:
            group.add_argument(flag_name, nargs="+", default=f.default, help=meta["help"])
        else:
            group.add_argument(flag_name, type=kind, default=f.default, help=meta["help"], choices=meta.get("choices"))
    return parser


def parse_config(argv: Optional[List[str]] = None) -> TrainConfig:
    from . import config_file

    parser = build_parser(description="Continual pretraining / SFT of Llama models on Colossal-AI Booster plugins.")
    return config_file.parse(TrainConfig, parser, argv)
