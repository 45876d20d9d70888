"""`inference_example.py --chat` through a pseudo-terminal: turns carry the history, /reset, Ctrl-C, /exit."""

import os
import sys

import pexpect
import pytest
import torch

from colossal_hammer.serve.prompts import chat_prompt_ids
from tests.distributed import REPO

sys.path.insert(0, str(REPO))
import inference_example  # noqa: E402


def greedy(model, tok, messages, n):
    """The reply generate() gives for the conversation: independent of the engine the chat uses."""
    ids = chat_prompt_ids(tok, messages)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True)


def said(child) -> str:
    """The reply printed before the next prompt, without the echoed input line."""
    child.expect_exact(">>> ")
    text = child.before.replace("\r\n", "\n")
    return text.split("\n", 1)[1].rstrip("\n") if "\n" in text else ""


def test_chat_flag_keeps_its_old_template_meaning():
    args = inference_example.build_parser().parse_args(["--model_path", "m", "--chat", "llama2"])
    assert args.chat is False and args.chat_template == "llama2"
    args = inference_example.build_parser().parse_args(["--model_path", "m", "--chat"])
    assert args.chat is True and args.chat_template == "auto"
    with pytest.raises(SystemExit):
        inference_example.build_parser().parse_args(["--model_path", "m", "--chat", "llama9"])


def spawn_chat(model_dir, *flags):
    """inference_example.py --chat in a pseudo-terminal, as a person runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    return pexpect.spawn(sys.executable, [str(REPO / "inference_example.py"), "--model_path", model_dir, "--chat",
                                          *flags, "--device", "cpu"],
                         env=env, encoding="utf-8", timeout=60, dimensions=(40, 200))


def test_terminal_chat_two_turns_reset_exit(served_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(served_model).eval()
    tok = AutoTokenizer.from_pretrained(served_model)
    child = spawn_chat(served_model, "--do_sample", "false", "--max_new_tokens", "8")
    child.expect("/reset starts a new conversation")
    child.expect_exact(">>> ")
    child.sendline("Hello there")
    first = said(child)
    assert first == greedy(model, tok, [{"role": "user", "content": "Hello there"}], 8)
    child.sendline("And then?")
    second = said(child)
    history = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "And then?"}]
    assert second == greedy(model, tok, history, 8)  # the second turn saw the first
    child.sendline("/reset")
    child.expect_exact("(new conversation)")
    child.expect_exact(">>> ")
    child.sendline("And then?")
    assert said(child) == greedy(model, tok, [{"role": "user", "content": "And then?"}], 8)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_reply_not_the_session(served_model):
    child = spawn_chat(served_model, "--temperature", "0", "--max_new_tokens", "2000")
    child.expect_exact(">>> ")
    child.sendline("Tell me everything.")
    child.expect_exact("Tell me everything.\r\n")
    child.expect(r"\S")  # the reply has started streaming
    child.sendintr()
    child.expect_exact("[stopped]")
    child.expect_exact(">>> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
