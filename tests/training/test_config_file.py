"""train.py --config FILE.yaml: the file and the flags over it make one config, which the run trains with,
prints (--print_config), records (run_info.json, every checkpoint) and compares on resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from colossal_hammer.errors import InputError
from colossal_hammer.plan.config import parse as plan_parse
from colossal_hammer.training.config import parse_config
from tests.distributed import REPO, launch, train

EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))

# A tiny zero2 run, grouped by section, and one flat key: both spellings in one file.
TINY_ZERO2 = """\
model:
  model_config: tiny
data:
  benchmark: true
  num_samples: 16
  max_length: 64
parallelism:
  plugin: zero2
optimisation:
  lr: 2.0e-3
  max_steps: 50      # the command line's --max_steps wins
  seed: 7
checkpoints:
  save_interval: 0
weight_decay: 0.05
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def run_train(*args, cwd=None):
    return subprocess.run([sys.executable, str(REPO / "train.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_yaml_config_trains_two_steps_under_zero2_and_records_the_merged_config(tmp_path):
    config = write(tmp_path / "stage.yaml", TINY_ZERO2)
    run = train(["--config", config, "--max_steps", "2"], tmp_path / "logs")
    assert [r["step"] for r in run["records"]] == [1, 2]
    assert "plugin=zero2" in run["output"]
    recorded = run["info"]["config"]
    assert (recorded["plugin"], recorded["max_steps"], recorded["lr"], recorded["weight_decay"]) == ("zero2", 2, 2e-3,
                                                                                                     0.05)
    assert recorded["save_dir"] == str(tmp_path / "logs") + "-ckpt"  # launch()'s --save_dir over the file's default
    # the checkpoint records the same resolved config, and so does --print_config for the same command line
    states = json.loads((tmp_path / "logs-ckpt" / "step-2" / "running_states.json").read_text())
    assert states["config"] == recorded
    printed = run_train("--config", config, "--max_steps", "2", "--save_dir", recorded["save_dir"],
                        "--tensorboard_dir", tmp_path / "logs", "--print_config")
    assert printed.returncode == 0, printed.stderr
    flat = {k: v for section in yaml.safe_load(printed.stdout).values() for k, v in section.items()}
    assert flat == {k: v for k, v in recorded.items() if k != "plan"}


def test_print_config_prints_the_resolved_config_which_reads_back_the_same(tmp_path):
    config = write(tmp_path / "stage.yaml", TINY_ZERO2)
    first = run_train("--config", config, "--lr", "5e-4", "--print_config")
    assert first.returncode == 0 and first.stderr == "", first.stderr
    printed = yaml.safe_load(first.stdout)
    assert list(printed)[:2] == ["model", "data"] and "cluster" not in printed
    assert printed["optimisation"]["lr"] == 5e-4  # the flag over the file's 2e-3
    assert printed["optimisation"]["max_steps"] == 50 and printed["optimisation"]["weight_decay"] == 0.05
    assert printed["parallelism"]["plugin"] == "zero2" and printed["data"]["benchmark"] is True
    assert printed["logging"]["tensorboard_dir"] == "checkpoint_dir/logs"  # resolved: validate() filled it in
    # what it prints is a config file: read back, it resolves to the very same config
    again = run_train("--config", write(tmp_path / "printed.yaml", first.stdout), "--print_config")
    assert again.returncode == 0 and again.stdout == first.stdout


@pytest.mark.parametrize("text, words", [
    ("optimisation:\n  lr: 1.0e-4\n  wieght_decay: 0.1\n", "bad.yaml:3: wieght_decay: no such setting (did you mean 'weight_decay'?)"),
    ("lr: 1.0e-4\nplugn: zero2\n", "bad.yaml:2: plugn: no such setting (did you mean 'plugin'?)"),
    ("batch_size: two\n", "bad.yaml:1: batch_size: expected an integer, got 'two'"),
    ("use_grad_checkpoint: 1\n", "bad.yaml:1: use_grad_checkpoint: expected true or false, got 1"),
    ("parallelism:\n  plugin: zero3\n", "bad.yaml:2: plugin: 'zero3' is not one of ddp"),
    ("model:\n  lr: 1.0e-4\n", "bad.yaml:2: lr: belongs to section 'optimisation', not 'model'"),
    ("lr: 1.0e-4\noptimisation:\n  lr: 2.0e-4\n", "bad.yaml:3: lr: given twice (also at line 1)"),
    ("lr: 1.0e-4\nlr: 2.0e-4\n", "bad.yaml:2: lr: given twice (also at line 1)"),
    ("plan: true\n", "bad.yaml:1: plan: says what train.py does"),
    ("lr: [1\n", "bad.yaml:2: not valid YAML"),
    ("- lr\n", "bad.yaml: expected a mapping of settings"),
])
def test_a_bad_key_or_value_is_one_error_line_naming_file_and_key(text, words, tmp_path):
    proc = run_train("--config", write(tmp_path / "bad.yaml", text), "--model_config", "tiny", "--benchmark")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and words in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {tmp_path / 'bad.yaml'}"), proc.stderr


def test_a_missing_config_file_is_one_line():
    proc = run_train("--config", "no/such.yaml", "--model_config", "tiny", "--benchmark")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --config no/such.yaml: cannot read it (No such file or directory)"


def test_flags_override_the_file_and_a_model_flag_replaces_the_files_model(tmp_path):
    config = write(tmp_path / "c.yaml", "model: {pretrained: /path/to/model}\ndata: {benchmark: true}\n"
                                        "optimisation: {lr: 1.0e-4, use_grad_checkpoint: true}\nresume: auto\n")
    cfg = parse_config(["--config", str(config), "--lr", "3e-5", "--model_config", "tiny", "--load_checkpoint", "x"])
    assert (cfg.lr, cfg.use_grad_checkpoint) == (3e-5, True)
    assert (cfg.pretrained, cfg.model_config) == (None, "tiny")  # one of pretrained/model_config/load_weights_only
    assert (cfg.resume, cfg.load_checkpoint) == (None, "x")  # one of resume/load_checkpoint
    assert parse_config(["--config", str(config)]).pretrained == "/path/to/model"


@pytest.mark.parametrize("path", EXAMPLES, ids=[str(p.relative_to(REPO)) for p in EXAMPLES])
def test_every_example_config_parses_and_validates(path):
    cfg = parse_config(["--config", str(path)])
    assert cfg.max_length >= 256 and (cfg.pretrained or cfg.load_weights_only or cfg.model_config)
    assert cfg.dataset and not cfg.benchmark


def test_the_cluster_example_is_colossal_llama2_7b_and_the_planner_reads_it():
    path = REPO / "examples" / "cluster" / "colossal_llama2_7b.yaml"
    cfg = parse_config(["--config", str(path)])
    assert (cfg.plugin, cfg.lr, cfg.batch_size, cfg.max_length, cfg.weight_decay, cfg.warmup_steps) == (
        "zero2", 1e-4, 8, 4096, 0.01, 100)
    plan = plan_parse(["--config", str(path), "--model_config", "llama2-7b", "--gpu", "a800-80g", "--nodes", "8"])
    assert (plan.plugin, plan.lr, plan.nodes, plan.model_config, plan.pretrained) == ("zero2", 1e-4, 8, "llama2-7b", None)


def test_cluster_settings_are_the_planners_only(tmp_path):
    config = write(tmp_path / "c.yaml", "model_config: tiny\ndata: {benchmark: true}\ncluster: {gpu: a800-80g, nodes: 2}\n")
    assert plan_parse(["--config", str(config)]).nodes == 2
    with pytest.raises(InputError, match=r"c.yaml:3: cluster: no such setting"):
        parse_config(["--config", str(config)])


def test_resuming_with_a_changed_config_file_says_which_keys_differ(tmp_path):
    """A layout key changed in the file is refused naming it, a learning rate that would jump too; another key
    (grad_clip) is said, then trained."""
    base = "model_config: tiny\ndata: {benchmark: true, num_samples: 32, max_length: 32}\nplugin: ddp\n" \
           "mixed_precision: fp32\nsave_interval: 0\nresume: auto\n"
    save = ["--save_dir", tmp_path / "ckpt"]
    first = write(tmp_path / "first.yaml", base + "max_steps: 2\nlr: 1.0e-3\n")
    train(["--config", first, *save], tmp_path / "logs1", nproc=1)
    other_plugin = write(tmp_path / "zero2.yaml", base.replace("plugin: ddp", "plugin: zero2").replace(
        "fp32", "bf16") + "max_steps: 3\nlr: 1.0e-3\n")
    refused = launch(["--config", other_plugin, *save], tmp_path / "logs2", nproc=1)
    assert refused.returncode == 2
    errors = [line for line in refused.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--plugin ddp --mixed_precision fp32, this run has --plugin zero2 " \
                                 "--mixed_precision bf16" in errors[0], refused.stdout[-3000:]
    # a learning rate that would jump at the resume step is refused (training/schedule.py), from a file as by flag
    new_lr = write(tmp_path / "new_lr.yaml", base + "max_steps: 3\nlr: 5.0e-4\n")
    jumped = launch(["--config", new_lr, *save], tmp_path / "logs3", nproc=1)
    errors = [line for line in jumped.stdout.splitlines() if line.startswith("error:")]
    assert jumped.returncode == 2 and len(errors) == 1 and "the learning rate would jump" in errors[0], errors
    new_clip = write(tmp_path / "new_clip.yaml", base + "max_steps: 3\nlr: 1.0e-3\ngrad_clip: 0.5\n")
    resumed = train(["--config", new_clip, *save], tmp_path / "logs4", nproc=1)
    assert resumed["info"]["start_step"] == 2 and [r["step"] for r in resumed["records"]] == [3]
    note = next(line for line in resumed["output"].splitlines() if line.startswith("note: resuming"))
    assert "max_steps 2 -> 3" in note and "grad_clip 1.0 -> 0.5" in note, note
    assert "tensorboard_dir" in note  # each run its own log folder here: said too


def test_demo_configs_are_the_demos_own_commands(monkeypatch):
    """examples/demo/NAME.yaml resolves to the config of the command the demo runs for NAME (at --scale full), for
    the runs whose command needs nothing built first (base and dpo make their data in the same method)."""
    from colossal_hammer.demo.pipeline import SCALES, Demo
    from colossal_hammer.demo.post_training import PostTraining
    from colossal_hammer.demo.upcycling import STEPS, Upcycling

    demo = Demo(Path("demo_output"), SCALES["full"])
    steps = {"stage1": demo.s.stage1_steps, "stage2": demo.s.stage2_steps, "sft": demo.s.sft_steps,
             "sft_lora": demo.s.sft_steps, "continue_dense": STEPS["full"], "continue_moe": STEPS["full"]}
    commands = {}

    def run(*cmd):
        cmd = [str(c) for c in cmd]
        if "train.py" in cmd:
            argv = cmd[cmd.index("train.py") + 1:]
            commands[Path(argv[argv.index("--save_dir") + 1]).name] = argv
        return '{"params": 1}'

    monkeypatch.setattr(demo, "run", run)
    monkeypatch.setattr(demo, "last_step", lambda name: demo.out / "ckpt" / name / f"step-{steps[name]}")
    demo.stage1(), demo.stage2(), demo.sft()
    PostTraining(demo, "full").sft_lora()
    upcycling = Upcycling(demo, "full")
    upcycling.dense()
    monkeypatch.setattr(demo, "records", lambda name: [], raising=False)
    try:
        upcycling.moe()
    except Exception:  # what follows its training command reads the run's records: the command is all we need
        pass
    assert sorted(commands) == ["continue_dense", "continue_moe", "sft", "sft_lora", "stage1", "stage2"]
    assert STEPS["full"] == parse_config(["--config", str(REPO / "examples/demo/continue_moe.yaml")]).max_steps
    for name, argv in commands.items():
        demo_cfg = json.loads(parse_config(argv).to_json())
        example = json.loads(parse_config(["--config", str(REPO / "examples" / "demo" / f"{name}.yaml")]).to_json())
        assert example == demo_cfg, (name, {k: (example[k], demo_cfg[k]) for k in example if example[k] != demo_cfg[k]})
