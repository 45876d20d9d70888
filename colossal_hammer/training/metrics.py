"""Per-step metrics: TensorBoard scalars for people, a JSON-lines file for scripts and tests."""

import json
import os


class MetricsLogger:
    SCALARS = ("loss", "lr", "grad_norm", "tokens_per_second")

    def __init__(self, log_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.writer = None
        self.file = None
        if not enabled:
            return
        os.makedirs(log_dir, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir)
        # Appending keeps one history across resumed runs; each line carries its step.
        self.file = open(os.path.join(log_dir, "metrics.jsonl"), "a", encoding="utf-8")

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        for key in self.SCALARS:
            if key in record:
                self.writer.add_scalar(f"train/{key}", record[key], record["step"])
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.file.close()
