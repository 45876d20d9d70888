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
    # temperature 0 means greedy, as in OpenAI's API: the same text as --do_sample False
    zero = subprocess.run(cmd[:-4] + ["--temperature", "0", "--seed", "1", "--input_txt", "什么是人工智能"],
                          capture_output=True, text=True, env=env, check=True)
    assert zero.stdout == first


def test_chat_auto_uses_the_checkpoint_template_and_says_so(tokenizer_dir, tmp_path):
    """An SFT checkpoint carries its template as chat_template; --chat auto uses it, in one stderr line."""
    from colossal_hammer.data.sft import BUILTIN_TEMPLATES

    save_tiny_llama(tokenizer_dir, tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert "tokenizer has no chat_template" in inference_example.chat_mode(tok, "auto")
    tok.chat_template = BUILTIN_TEMPLATES[2]
    tok.save_pretrained(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert inference_example.render(tok, "hi", "auto") == inference_example.render(tok, "hi", "llama2")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "inference_example.py"), "--model_path", str(tmp_path / "m"),
                           "--max_new_tokens", "2", "--do_sample", "false", "--input_txt", "hi"],
                          capture_output=True, text=True, env=env, check=True)
    chat_lines = [line for line in proc.stderr.splitlines() if line.startswith("chat:")]
    assert chat_lines == ["chat: the tokenizer's chat_template (tokenizer_config.json; "
                          "--chat_template no sends raw prompts)"]


def test_pad_id_zero_is_a_real_id():
    class Tok:
        pad_token_id, eos_token_id = 0, 2

    assert inference_example.pad_id(Tok()) == 0
    Tok.pad_token_id = None
    assert inference_example.pad_id(Tok()) == 2
