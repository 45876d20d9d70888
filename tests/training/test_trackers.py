"""--report_to wandb,mlflow for real: W&B's offline run files read back record by record, and a real `mlflow server`
on 127.0.0.1 read back through MlflowClient; both equal to metrics.jsonl, and a resumed run continues both runs."""

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.distributed import TINY, launch, train

FLAGS = TINY + ["--num_samples", "32", "--plugin", "ddp", "--mixed_precision", "fp32", "--save_interval", "2",
                "--report_to", "tensorboard,wandb,mlflow", "--project", "trackers_test", "--resume", "auto"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a free 127.0.0.1 port with a SQLite store of its own; its URI."""
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "server-artifacts")]
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "mlflow-server.log").read_text()[-3000:]
            time.sleep(1)
        yield uri
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
        log.close()


def wandb_records(run_dir: Path) -> list:
    """The protobuf Records of a W&B run file (run-ID.wandb): a LevelDB-style log of 32 KiB blocks, each record a
    7-byte header (CRC32, length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes, after the file's own
    7-byte header (':W&B', magic, version)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_run(run_dir: Path) -> dict:
    """The run id, config and history {step: {key: value}} that a W&B run's offline file holds."""
    out = {"id": None, "config": {}, "history": {}}
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["id"] = record.run.run_id
            out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            out["history"][items["_step"]] = items
    return out


def jsonl(log_dir: Path) -> list:
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def no_wandb_settings(monkeypatch):
    """No W&B key, mode or folder from the environment running the tests (a HOME of the test's own: no .netrc)."""
    for name in [n for n in os.environ if n.startswith(("WANDB_", "MLFLOW_"))]:
        monkeypatch.delenv(name)


def test_wandb_offline_and_mlflow_server_hold_what_metrics_jsonl_holds_and_resume_continues_them(
        mlflow_server, tmp_path):
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "HOME": str(tmp_path / "home")}  # no key: W&B goes offline itself
    save = ["--save_dir", tmp_path / "ckpt"]
    first = train(FLAGS + save + ["--max_steps", "2"], tmp_path / "logs1", env=env)
    second = train(FLAGS + save + ["--max_steps", "4"], tmp_path / "logs2", env=env)
    assert second["info"]["start_step"] == 2

    ids = [json.loads((tmp_path / "ckpt" / f"step-{s}" / "running_states.json").read_text())["metrics"] for s in (2, 4)]
    assert ids[0] == ids[1] and ids[0]["tensorboard"] == {}  # the resumed run kept both runs

    # W&B: one offline run per launch (rank 0 only), both the same run, history = metrics.jsonl's steps
    for run, log_dir in ((first, tmp_path / "logs1"), (second, tmp_path / "logs2")):
        (run_dir,) = (log_dir / "wandb").glob("offline-run-*")
        logged = wandb_run(run_dir)
        assert logged["id"] == ids[0]["wandb"]["run_id"]
        assert logged["config"]["lr"] == 3e-4 and logged["config"]["report_to"] == "tensorboard,wandb,mlflow"
        records = jsonl(log_dir)
        assert sorted(logged["history"]) == [r["step"] for r in records]
        for r in records:
            for key in ("loss", "lr", "grad_norm", "tokens_per_second"):
                assert logged["history"][r["step"]][f"train/{key}"] == r[key], (key, r)

    # MLflow: one run on the test's server, steps 1-4 of both launches, equal to metrics.jsonl's
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("trackers_test")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [ids[0]["mlflow"]["run_id"]]
    assert runs[0].info.status == "FINISHED" and runs[0].info.run_name == "ckpt"
    assert runs[0].data.params["lr"] == "0.0003" and runs[0].data.params["plugin"] == "ddp"
    records = jsonl(tmp_path / "logs1") + jsonl(tmp_path / "logs2")
    for key in ("loss", "lr", "grad_norm"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, f"train/{key}"))
        assert history == [(r["step"], r[key]) for r in records], key


def test_wandb_goes_offline_when_its_server_cannot_be_reached(tmp_path):
    """A key and online mode, but nothing listening: one warning line, and the run trains and logs offline."""
    env = {"WANDB_MODE": "online", "WANDB_API_KEY": "k" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{free_port()}",
           "WANDB_INIT_TIMEOUT": "5", "HOME": str(tmp_path / "home")}
    proc = launch(TINY + ["--plugin", "ddp", "--mixed_precision", "fp32", "--max_steps", "2", "--report_to", "wandb"],
                  tmp_path / "logs", nproc=1, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "warning: --report_to wandb: cannot start online" in proc.stdout
    (run_dir,) = (tmp_path / "logs" / "wandb").glob("offline-run-*")
    assert sorted(wandb_run(run_dir)["history"]) == [1, 2]
    assert not any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "logs"))  # not asked for


def test_a_bad_wandb_mode_is_one_line_before_anything_starts(tmp_path):
    proc = launch(TINY + ["--plugin", "ddp", "--report_to", "wandb"], tmp_path / "logs", nproc=1,
                  env={"WANDB_MODE": "offlin"})
    assert proc.returncode != 0
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert errors == ["error: --report_to wandb: WANDB_MODE='offlin' is not one of online, offline, disabled, shared, "
                      "dryrun, run; set one or unset it (offline without an API key, online with one)"], proc.stdout
    assert "Traceback" not in proc.stdout


def test_eval_figures_and_config_reach_every_tracker_local_stores(tokenizer_dir, tmp_path):
    """--eval_dataset's figures go to W&B (offline) and MLflow (no URI: the log folder's SQLite store) as to
    metrics.jsonl, and TensorBoard's events hold them too."""
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from colossal_hammer.data import corpora
    from colossal_hammer.data.pretrain import main as prepare_pretrain
    from tests.conftest import write_jsonl
    from tests.training.sft_data import tiny_model, uneven_sft_dataset

    write_jsonl(tmp_path / "raw" / "a.jsonl", [{"target": p, "category": "english"}
                                              for p in corpora.english_paragraphs()[-12:]])
    prepare_pretrain(["--data_input_dirs", str(tmp_path / "raw"), "--tokenizer_dir", tokenizer_dir,
                      "--data_output_dirs", str(tmp_path / "heldout"), "--max_length", "96",
                      "--num_spliced_dataset_bins", "1", "--num_workers", "1"])
    flags = ["--pretrained", tiny_model(tokenizer_dir, tmp_path / "model"), "--dataset",
             uneven_sft_dataset(tokenizer_dir, tmp_path / "train", samples=8), "--max_length", "192", "--plugin", "ddp",
             "--mixed_precision", "fp32", "--max_steps", "2", "--eval_dataset", f"held={tmp_path / 'heldout'}",
             "--eval_interval", "1", "--report_to", "tensorboard,wandb,mlflow", "--run_name", "evals"]
    run = train(flags, tmp_path / "logs", nproc=2, env={"HOME": str(tmp_path / "home")})
    evals = {r["step"]: r for r in run["evals"]}
    assert sorted(evals) == [1, 2]
    keys = ("eval/held/loss", "eval/held/bpb", "eval/held/english/loss")

    (run_dir,) = (tmp_path / "logs" / "wandb").glob("offline-run-*")
    logged = wandb_run(run_dir)
    assert logged["config"]["eval_dataset"] == [f"held={tmp_path / 'heldout'}"]
    for step, record in evals.items():
        assert all(logged["history"][step][k] == record[k] for k in keys), (logged["history"][step], record)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("colossal_hammer").experiment_id])
    assert mlflow_run.info.run_name == "evals" and mlflow_run.data.params["eval_interval"] == "1"
    for key in keys:
        history = sorted((m.step, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, key))
        assert history == [(s, evals[s][key]) for s in (1, 2)], key

    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    assert "config/text_summary" in events.Tags()["tensors"]  # the config, in TensorBoard's TEXT tab
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("eval/held/loss")] == [
        (s, evals[s]["eval/held/loss"]) for s in (1, 2)]
