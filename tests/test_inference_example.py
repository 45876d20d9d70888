"""inference_example.py: booleans parse as written, greedy output is deterministic, the chat template applies."""

import os
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from tests.conftest import save_tiny_llama
from tests.distributed import REPO

sys.path.insert(0, str(REPO))
import inference_example  # noqa: E402


@pytest.mark.parametrize("argv, expected", [([], True), (["--do_sample"], True), (["--do_sample", "False"], False),
                                            (["--do_sample", "false"], False), (["--do_sample", "1"], True)])
def test_do_sample_parses_booleans(argv, expected):
    assert inference_example.build_parser().parse_args(["--model_path", "x", *argv]).do_sample is expected


def test_greedy_generation_streams_and_chat_template_applies(tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    save_tiny_llama(tokenizer_dir, tmp_path / "m")
    cmd = [sys.executable, str(REPO / "inference_example.py"), "--model_path", str(tmp_path / "m"),
           "--max_new_tokens", "6", "--do_sample", "False", "--input_txt", "什么是人工智能"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    assert first == second and first.strip()
    assert inference_example.render(tok, "hi", "auto") == "hi"  # no template in this tokenizer: plain prompt
    assert inference_example.render(tok, "hi", "llama2").endswith("[INST] hi [/INST]")
    piped = subprocess.run(cmd[:-2] + ["--chat", "llama2"], input="第一\n第二\n", capture_output=True, text=True,
                           env=env, check=True).stdout
    assert piped.count("\n") >= 2
