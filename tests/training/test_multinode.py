"""Two "nodes" over real ssh: `colossalai run --hostfile` through train.example.sh, 1 process per node.

An sshd of our own (a host key and a client key made for the test, a free port) listens on two
loopback addresses, 127.0.0.2 and 127.0.0.3. Not 127.0.0.1 and localhost: colossalai run counts those
(and this machine's own name) as the local host and starts them without ssh, so a hostfile naming
them would pass without one ssh connection. The ssh client side is a HOME of the test's own whose
~/.ssh/config gives port, key and host-key policy, as a cluster user's would.

The Makefile's `ssh-server` prerequisite of `make test` installs openssh-server (as root, with
apt-get) when missing; without sshd the test skips with the reason, except under CI=true, where it
fails instead.
"""

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from colossal_hammer.data.pretrain import main as prepare_pretrain
from colossal_hammer.data import corpora
from tests.conftest import write_jsonl
from tests.distributed import REPO, train
from tests.training.test_dataset_training import TOKENIZER_ARGS, tiny_model_dir

SSHD = "/usr/sbin/sshd"
NODES = ("127.0.0.2", "127.0.0.3")
DEAD = "127.0.0.4"  # a loopback address where nothing listens: refused at once


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def ssh_home(tmp_path_factory):
    """A HOME whose ssh config reaches an sshd of the test's own on NODES; the sshd's log file beside it."""
    missing = [tool for tool in (SSHD, shutil.which("ssh-keygen")) if not tool or not os.access(tool, os.X_OK)]
    if missing:
        reason = "no openssh-server (/usr/sbin/sshd): `make ssh-server` installs it (as root, apt-get)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; under CI=true this test must run")
        print(reason)
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("ssh")
    home, server = root / "home", root / "server"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    server.mkdir()
    keygen(server / "host_key")
    keygen(home / ".ssh" / "id_ed25519")
    shutil.copy(home / ".ssh" / "id_ed25519.pub", server / "authorized_keys")
    port = free_port()
    listen = "".join(f"ListenAddress {node}:{port}\n" for node in NODES)
    (server / "sshd_config").write_text(
        f"{listen}HostKey {server / 'host_key'}\nAuthorizedKeysFile {server / 'authorized_keys'}\n"
        f"PidFile {server / 'sshd.pid'}\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "LogLevel INFO\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = server / "sshd.log"
    sshd = subprocess.Popen([SSHD, "-D", "-f", str(server / "sshd_config"), "-E", str(log)])
    (home / ".ssh" / "config").write_text(
        f"Host {' '.join(NODES)} {DEAD}\n  Port {port}\n  User {getpass.getuser()}\n"
        f"  IdentityFile {home / '.ssh' / 'id_ed25519'}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n  BatchMode yes\n  ConnectTimeout 10\n  LogLevel ERROR\n")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((NODES[0], port), timeout=1).close()
                break
            except OSError:
                if sshd.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sshd did not start: {log.read_text() if log.exists() else sshd.returncode}")
                time.sleep(0.1)
        yield {"home": home, "log": log}
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)


def script_env(ssh_home, tmp_path, hostfile, **extra) -> dict:
    """A short environment: colossalai run exports every variable to every node inside double quotes."""
    bindir = os.path.dirname(sys.executable)
    env = {"PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin", "HOME": str(ssh_home["home"]),
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HOSTFILE": str(hostfile), "NPROC_PER_NODE": "1", "LOG_DIR": str(tmp_path / "logs"),
           "SAVE_DIR": str(tmp_path / "ckpt")}
    return {**env, **{k: str(v) for k, v in extra.items()}}


def run_script(env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "train.example.sh")], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=600, start_new_session=True)


def test_two_nodes_over_ssh_train_like_one_node_with_two_processes(ssh_home, tokenizer_dir, tmp_path):
    write_jsonl(tmp_path / "raw" / "a.jsonl", [{"target": p, "category": "en"} for p in corpora.english_paragraphs()[:80]])
    prepare_pretrain(["--data_input_dirs", str(tmp_path / "raw"), "--tokenizer_dir", tokenizer_dir,
                      "--data_output_dirs", str(tmp_path / "pt"), "--max_length", "64", *TOKENIZER_ARGS])
    model = tiny_model_dir(tokenizer_dir, tmp_path / "model")
    (tmp_path / "hostfile").write_text("\n".join(NODES) + "\n")
    flags = dict(PRETRAINED=model, DATASET=tmp_path / "pt", PLUGIN="zero2", MAX_LENGTH=64, BATCH_SIZE=2,
                 ACCUMULATION_STEPS=1, LR="1e-3", SAVE_INTERVAL=100, EXTRA_ARGS="--max_steps 4 --seed 7")
    accepted_before = ssh_home["log"].read_text().count("Accepted publickey")
    proc = run_script(script_env(ssh_home, tmp_path, tmp_path / "hostfile", MASTER_PORT=free_port(), **flags))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    # every node reached over ssh twice (the pre-flight, then colossalai run): none ran as "local"
    log = ssh_home["log"].read_text()
    assert log.count("Accepted publickey") - accepted_before == 2 * len(NODES), log[-3000:]
    status = proc.stdout[proc.stdout.index("Training on All Nodes"):]
    assert all(f"{node}: success" in status for node in NODES), status
    info = json.loads((tmp_path / "logs" / "run_info.json").read_text())
    assert info["world_size"] == 2
    two_nodes = [json.loads(line)["loss"] for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]

    assert info["config"]["weight_decay"] == 0.01 and info["config"]["lr"] == 1e-3  # its config file, LR over it

    # the same config and flags as train.example.sh passes, on one node with two processes (torchrun)
    reference = train(["--config", REPO / "examples" / "cluster" / "colossal_llama2_7b.yaml", "--pretrained", model, "--dataset", tmp_path / "pt", "--plugin", "zero2", "--max_length", "64",
                       "--batch_size", "2", "--accumulation_steps", "1", "--lr", "1e-3", "--num_epochs", "1",
                       "--save_interval", "100", "--save_dir", tmp_path / "ref-ckpt", "--resume", "auto",
                       "--max_steps", "4", "--seed", "7"], tmp_path / "ref-logs")
    assert len(two_nodes) == 4 and two_nodes == reference["losses"]


@pytest.mark.parametrize("bad, words", [
    (DEAD, "cannot ssh in"),
    ("no-such-host.invalid", "cannot resolve the name"),
    ("# the second node", "one host name per line"),
])
def test_a_host_that_cannot_be_reached_stops_the_launch_in_one_line(ssh_home, bad, words, tmp_path):
    (tmp_path / "hostfile").write_text(f"{NODES[0]}\n\n{bad}\n")
    accepted_before = ssh_home["log"].read_text().count("Accepted publickey")
    proc = run_script(script_env(ssh_home, tmp_path, tmp_path / "hostfile", MODEL_CONFIG="tiny",
                                 DATASET=tmp_path / "none", MASTER_PORT=free_port()))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {tmp_path / 'hostfile'}:3: ") and words in errors[0], \
        proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and not (tmp_path / "logs").exists()
    if bad == DEAD:  # the good host was checked first, over ssh, and nothing was launched on it
        assert ssh_home["log"].read_text().count("Accepted publickey") == accepted_before + 1


def test_a_host_without_this_folder_or_venv_is_named(ssh_home, monkeypatch):
    from colossal_hammer.errors import InputError
    from colossal_hammer.hostfile import check_host

    monkeypatch.setenv("HOME", str(ssh_home["home"]))  # fabric reads ~/.ssh/config from here
    check_host(NODES[0], str(REPO), sys.executable)  # the real folder and venv: fine
    with pytest.raises(InputError, match="has no /nonexistent/colossal_hammer or no .*same paths and venv"):
        check_host(NODES[0], "/nonexistent/colossal_hammer", sys.executable)
    with pytest.raises(InputError, match="same paths and venv"):
        check_host(NODES[0], str(REPO), "/nonexistent/venv/bin/python")
