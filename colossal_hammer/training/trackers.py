"""Where a run's scalars go besides metrics.jsonl (--report_to): TensorBoard, Weights & Biases, MLflow.

Each tracker takes the same scalars at the same steps and the run's resolved config, and each keeps what a
resumed run needs to continue the same run in its state_dict (the W&B / MLflow run id), which MetricsLogger
hands to the checkpoint's running_states.json. Only rank 0 builds them (MetricsLogger is off elsewhere).
Neither service may stop training: W&B runs offline without a key (WANDB_MODE wins if set) and goes offline when
it cannot start online; MLflow logs asynchronously, to MLFLOW_TRACKING_URI or a SQLite store in the log folder.
"""

from __future__ import annotations

import importlib.util
import json
import netrc
import os
import sys
from typing import Optional
from urllib.parse import urlparse

REPORTERS = ("tensorboard", "wandb", "mlflow")
PINS = {"wandb": "wandb==0.31.0", "mlflow": "mlflow==3.18.0"}  # as setup.py's [trackers] extra
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")


def names_of(report_to: str) -> list:
    """The trackers of --report_to, in order; an unknown name is an InputError."""
    from ..errors import InputError

    names = [n.strip() for n in report_to.split(",") if n.strip()]
    unknown = [n for n in names if n not in REPORTERS and n != "none"]
    if unknown or ("none" in names and len(names) > 1):
        raise InputError(f"--report_to {report_to}: give a comma-separated list of {', '.join(REPORTERS)}, or none")
    return [n for n in names if n != "none"]


def _positive_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def check_environment(names: list) -> None:
    """What the trackers' environment would refuse once training started, refused now (on every rank)."""
    from ..errors import InputError

    for name in names:
        if name in PINS and importlib.util.find_spec(name) is None:
            raise InputError(f"--report_to {name}: the {name} package is not installed; pip install {PINS[name]} "
                             "(or the project's [trackers] extra)")
    timeout = os.environ.get("WANDB_INIT_TIMEOUT", "30")
    if "wandb" in names and not _positive_number(timeout):
        raise InputError(f"--report_to wandb: WANDB_INIT_TIMEOUT={timeout!r}: give seconds, a number > 0")
    mode = os.environ.get("WANDB_MODE")
    if "wandb" in names and mode is not None and mode not in WANDB_MODES:
        raise InputError(f"--report_to wandb: WANDB_MODE={mode!r} is not one of {', '.join(WANDB_MODES)}; set one "
                         "or unset it (offline without an API key, online with one)")


class TensorBoardTracker:
    def __init__(self, log_dir: str, config: dict, **_):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir)
        if config:  # the TEXT tab; config.json beside the events holds it too
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def log(self, scalars: dict, step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def state_dict(self) -> dict:
        return {}

    def close(self) -> None:
        self.writer.close()


def wandb_has_key(base_url: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(urlparse(base_url).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    def __init__(self, log_dir: str, project: str, name: str, config: dict, state: dict):
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_has_key(wandb.Settings().base_url) else "offline")
        # console off: W&B would wrap stdout/stderr, which train.py leaves through os._exit
        # init_timeout: how long an unreachable server may hold up the start before the run goes offline
        settings = dict(console="off", silent=True, x_disable_stats=True,
                        init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT", 30)))
        # allow_val_change: a resumed run may change settings (a new lr), which preflight has said in a note
        init = dict(project=project, name=name, dir=log_dir, config=config, id=state.get("run_id"), resume="allow",
                    allow_val_change=True)
        try:
            self.run = wandb.init(mode=mode, settings=wandb.Settings(**settings), **init)
        except Exception as e:  # W&B's own errors and the network's: the run goes on, logged offline
            if mode == "offline":
                raise
            reason = (str(e).strip().splitlines() or [""])[0]  # W&B's messages run over several lines
            print(f"warning: --report_to wandb: cannot start online ({e.__class__.__name__}: {reason}); logging "
                  f"offline to {log_dir}/wandb (upload later with `wandb sync`)", file=sys.stderr, flush=True)
            self.run = wandb.init(mode="offline", settings=wandb.Settings(**settings), **init)

    def log(self, scalars: dict, step: int) -> None:
        self.run.log(scalars, step=step)

    def state_dict(self) -> dict:
        return {"run_id": self.run.id}

    def close(self) -> None:
        self.run.finish()


def mlflow_params(config: dict) -> list:
    """The config as MLflow params (strings of at most 6,000 characters, as MLflow stores them)."""
    from mlflow.entities import Param

    return [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v)[:6000]) for k, v in config.items()]


class MlflowTracker:
    def __init__(self, log_dir: str, project: str, name: str, config: dict, state: dict):
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines on creating a store's tables
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath(log_dir)}/mlflow.db"
        mlflow.set_tracking_uri(uri)  # its asynchronous queue flushes through the global store, not the client's
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self.run_id = state.get("run_id")
        if self.run_id:  # the checkpoint's run: continue it, its params already logged
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(project)
        # a local store's artifacts would default to ./mlruns in whatever folder train.py runs in
        artifacts = None if "MLFLOW_TRACKING_URI" in os.environ else os.path.abspath(os.path.join(log_dir, "mlartifacts"))
        experiment_id = (experiment.experiment_id if experiment
                         else self.client.create_experiment(project, artifact_location=artifacts))
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        params = mlflow_params(config)
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, scalars: dict, step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in scalars.items()]
        # asynchronous: a slow tracking server delays its own queue, never the training step
        self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}

    def close(self) -> None:
        import mlflow

        try:
            mlflow.flush_async_logging()
            self.client.set_terminated(self.run_id)
        except Exception as e:  # the server gone at the end: metrics.jsonl and the checkpoints are written
            print(f"warning: --report_to mlflow: could not finish run {self.run_id} ({e.__class__.__name__}: "
                  f"{str(e)[:200]})", file=sys.stderr, flush=True)


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def build(cfg, log_dir: str, saved: Optional[dict] = None) -> dict:
    """The trackers of cfg.report_to (TensorBoard alone without a cfg) by name; `saved` is MetricsLogger's state in
    the resumed checkpoint. A run is named --run_name, else after its save_dir (each stage has its own)."""
    if cfg is None:
        return {"tensorboard": TensorBoardTracker(log_dir, config={})}
    config = json.loads(cfg.to_json())
    name = cfg.run_name or os.path.basename(os.path.normpath(os.path.abspath(cfg.save_dir)))
    return {n: TRACKERS[n](log_dir=log_dir, project=cfg.project, name=name, config=config,
                           state=(saved or {}).get(n, {}))
            for n in names_of(cfg.report_to)}
