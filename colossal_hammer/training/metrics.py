"""Per-step metrics: a JSON-lines file for scripts and tests, and the same scalars to the trackers of --report_to
(TensorBoard, W&B, MLflow: trackers.py) for people."""

import json
import math
import os
from typing import Optional

# Dense bf16 peak TFLOPS of common training GPUs, by a substring of torch.cuda.get_device_name().
KNOWN_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "4090": 165.0}


def training_flops(config, num_params: int, tokens: float, pairs: float) -> float:
    """FLOPs of training on `tokens` tokens whose attention covers `pairs` query-key pairs (the sum of
    block length^2 over a batch: model.doc_attention.attention_pairs): 6N per token for the matmuls plus
    12 * layers * hidden per pair (forward and backward of QK^T and AV), as in the PaLM paper's MFU."""
    return 6.0 * num_params * tokens + 12.0 * config.num_hidden_layers * config.hidden_size * pairs


def peak_tflops(given: Optional[float], device) -> Optional[float]:
    if given:
        return given
    if getattr(device, "type", None) == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
        return next((v for k, v in KNOWN_PEAK_TFLOPS.items() if k in name), None)
    return None


def memory_peak() -> dict:
    """This process's memory high-water mark so far: the CUDA allocator's (what the planner predicts per
    device) once CUDA is in use, else the host's maximum resident set (Linux counts ru_maxrss in KiB)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    import resource

    return {"peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def cut_back(path: str, step: int) -> list:
    """The lines of metrics.jsonl written up to the checkpoint of `step`: records of steps <= step, but not the
    skipped attempts logged after step was reached (a skipped attempt carries the step before it)."""
    if not os.path.isfile(path):
        return []
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by the crash
                continue
            if record["step"] < step or (record["step"] == step and not record.get("skipped")):
                kept.append(line if line.endswith("\n") else line + "\n")
    return kept


def _saved_state(checkpoint: Optional[str]) -> dict:
    """MetricsLogger's state in a checkpoint's running_states.json ({} for none, or one from before trackers)."""
    if not checkpoint:
        return {}
    with open(os.path.join(checkpoint, "running_states.json"), encoding="utf-8") as f:
        return json.load(f).get("metrics", {})


class MetricsLogger:
    SCALARS = ("loss", "lr", "grad_norm", "tokens_per_second", "padding_fraction", "mfu",
               "rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin",
               "router_aux_loss", "router_z_loss", "expert_load_cv")

    def __init__(self, log_dir: str, enabled: bool = True, resumed_step: Optional[int] = None, cfg=None,
                 resumed_from: Optional[str] = None):
        """A new run starts metrics.jsonl anew; a resumed one keeps the records up to its checkpoint's step, so
        the steps between that checkpoint and a crash, which it trains again, appear once. The trackers of
        cfg.report_to (TensorBoard alone without a cfg) get the same scalars; a resumed run continues their runs,
        whose ids its checkpoint (`resumed_from`) keeps."""
        self.enabled = enabled
        self.trackers = {}
        self.file = None
        if not enabled:
            return
        os.makedirs(log_dir, exist_ok=True)
        from . import trackers

        self.trackers = trackers.build(cfg, log_dir, _saved_state(resumed_from))
        path = os.path.join(log_dir, "metrics.jsonl")
        kept = cut_back(path, resumed_step) if resumed_step is not None else []
        self.file = open(path, "w", encoding="utf-8")
        self.file.writelines(kept)
        self.file.flush()

    def state_dict(self) -> dict:
        """What a resumed run needs to continue each tracker's run (kept in the checkpoint's running states)."""
        return {name: tracker.state_dict() for name, tracker in self.trackers.items()}

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        if record.get("kind") == "eval":  # eval/NAME[/CATEGORY]/{loss,bpb,tokens,bytes}: curves of the first two
            scalars = {k: v for k, v in record.items() if k.endswith(("/loss", "/bpb"))}
            self._print_eval(record)
        else:
            scalars = {f"train/{k}": record[k] for k in self.SCALARS if k in record}
            for layer, shares in enumerate(record.get("expert_load", ())):  # MoE: tokens' share per expert
                scalars.update({f"expert_load/layer_{layer}/expert_{e}": v for e, v in enumerate(shares)})
        finite = {key: value for key, value in scalars.items() if math.isfinite(value)}
        for tracker in self.trackers.values():
            tracker.log(finite, record["step"])
        if record.get("kind") != "eval":  # the logging rank's peak so far (bench/gpu_check.py reads it)
            record = {**record, **memory_peak()}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    @staticmethod
    def _print_eval(record: dict) -> None:
        sets = sorted(k[len("eval/"):-len("/bpb")] for k in record if k.endswith("/bpb") and k.count("/") == 2)
        shown = ", ".join(f"{n} loss {record[f'eval/{n}/loss']:.4f} bpb {record[f'eval/{n}/bpb']:.4f}" for n in sets)
        print(f"eval at step {record['step']}: {shown}", flush=True)

    def close(self) -> None:
        """Flush and close; closing again does nothing."""
        if self.enabled:
            self.enabled = False
            self.file.close()
            for tracker in self.trackers.values():
                tracker.close()
