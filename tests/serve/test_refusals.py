"""What cannot serve correctly is refused at start with one `error:` line, through the real CLI."""

import os
import subprocess
import sys

import torch

from tests.distributed import REPO
from tests.serve.live import free_port


def serve(*argv, env=None):
    """Run the server's CLI; a refusal exits at once, a server that starts is killed by the timeout (a failure)."""
    return subprocess.run([sys.executable, "-m", "colossal_hammer.serve", "--device", "cpu",
                           "--port", str(free_port()), *argv], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def assert_one_error_line(proc, *words):
    """Exit 2 and one `error:` line, the last (libraries' import warnings, e.g. bitsandbytes', may come first)."""
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert proc.returncode == 2 and errors == lines[-1:] and "Traceback" not in proc.stderr, proc.stderr
    assert all(w in errors[0] for w in words), errors[0]


def test_adapter_that_matches_no_module_is_refused(served_model, tmp_path):
    """Weights saved under other module names would load as nothing: the base model served as if adapted."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(served_model),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter, safe_serialization=True)
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({k.replace(".layers.", ".blocks."): v for k, v in weights.items()}, adapter / "adapter_model.safetensors")
    assert_one_error_line(serve("--model", served_model, "--adapter", str(adapter)), f"--adapter {adapter}")


def test_empty_api_key_is_refused(served_model):
    """An empty key (a variable set to nothing) would make every request a 401 with nothing said at start."""
    assert_one_error_line(serve("--model", served_model, env={"COLOSSAL_HAMMER_API_KEY": ""}),
                          "--api_key", "COLOSSAL_HAMMER_API_KEY", "empty")
    assert_one_error_line(serve("--model", served_model, "--api_key", " "), "--api_key", "empty")


def test_embedding_smaller_than_the_tokenizer_is_refused(tokenizer_dir, tmp_path):
    """Token ids past the embedding would fail every forward pass that meets them (500s)."""
    from tests.conftest import save_tiny_llama
    from transformers import AutoModelForCausalLM

    folder = str(tmp_path / "small-embedding")
    save_tiny_llama(tokenizer_dir, folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokens = model.config.vocab_size
    model.resize_token_embeddings(tokens - 100)
    model.save_pretrained(folder)
    assert_one_error_line(serve("--model", folder), f"--model {folder}", str(tokens), str(tokens - 100))
