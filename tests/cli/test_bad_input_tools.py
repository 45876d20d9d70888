"""The non-training tools under bad input, run as a user runs them (a subprocess each): exit status 2,
one `error:` line naming the flag or file, no traceback, and nothing under the inputs changed or added
(merge onto its own base used to overwrite the base's tokenizer.model)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from colossal_hammer.data import corpora
from colossal_hammer.demo import base_tokenizer
from tests.conftest import save_tiny_llama
from tests.distributed import REPO

EXTEND = ["-m", "colossal_hammer.tokenizer.extend"]
MERGE = ["-m", "colossal_hammer.tokenizer.merge"]
ANALYZE = ["-m", "colossal_hammer.tokenizer.analyze"]
INIT = ["-m", "colossal_hammer.model.init_embeddings"]
EXPORT = ["-m", "colossal_hammer.model.export"]
PPL = ["-m", "colossal_hammer.eval.perplexity"]
CHOICE = ["-m", "colossal_hammer.eval.choice"]
INFER = [str(REPO / "inference_example.py")]

# (id, argv with {placeholders} under the fixture root, text the error line must contain)
CASES = [
    ("analyze-missing", ANALYZE + ["{root}/nope"], "TOKENIZER {root}/nope: no such folder"),
    ("analyze-not-a-tokenizer", ANALYZE + ["{empty}"], "not a tokenizer folder"),
    ("analyze-file-not-a-model", ANALYZE + ["{file}"], "not a SentencePiece model"),
    ("analyze-text-missing", ANALYZE + ["{tok}", "--text_file", "{root}/nope.txt"], "--text_file"),
    ("analyze-text-not-utf8", ANALYZE + ["{tok}", "--text_file", "{latin1}"], "UTF-8"),
    ("analyze-output-no-folder", ANALYZE + ["{tok}", "--output", "{root}/no/report.json"], "does not exist"),
    ("analyze-disk-full", ANALYZE + ["{tok}", "--text_file", "{text}", "--output", "/dev/full"],
     "/dev/full: No space left on device"),
    ("extend-into-source", EXTEND + ["--source_tokenizer_dir", "{tok}", "--target_tokenizer_dir", "{tok}",
                                     "--expand_tokens_file", "{pieces}"], "--target_tokenizer_dir {tok}: is the input"),
    ("extend-into-file", EXTEND + ["--source_tokenizer_dir", "{tok}", "--target_tokenizer_dir", "{file}",
                                   "--expand_tokens_file", "{pieces}"], "is a file"),
    ("extend-source-missing", EXTEND + ["--source_tokenizer_dir", "{root}/nope", "--target_tokenizer_dir",
                                        "{root}/out", "--expand_tokens_file", "{pieces}"], "--source_tokenizer_dir"),
    ("merge-base-missing", MERGE + ["--base_tokenizer_dir", "{root}/nope", "--target_tokenizer_dir", "{root}/out",
                                    "--donor_model", "{tok}/tokenizer.model"], "--base_tokenizer_dir"),
    ("merge-base-not-sentencepiece", MERGE + ["--base_tokenizer_dir", "{empty}", "--target_tokenizer_dir",
                                              "{root}/out", "--donor_model", "{tok}/tokenizer.model"],
     "no SentencePiece tokenizer.model"),
    ("merge-onto-base", MERGE + ["--base_tokenizer_dir", "{tok}", "--target_tokenizer_dir", "{tok}",
                                 "--donor_model", "{tok}/tokenizer.model"], "--target_tokenizer_dir {tok}: is the input"),
    ("merge-into-base-parent", MERGE + ["--base_tokenizer_dir", "{tok}", "--target_tokenizer_dir", "{root}",
                                        "--donor_model", "{donor}"], "contains the input"),
    ("merge-into-base-subfolder", MERGE + ["--base_tokenizer_dir", "{tok}", "--target_tokenizer_dir", "{tok}/merged",
                                           "--donor_model", "{donor}"], "is inside the input"),
    ("merge-donor-not-a-model", MERGE + ["--base_tokenizer_dir", "{tok}", "--target_tokenizer_dir", "{root}/out",
                                         "--donor_model", "{file}"], "--donor_model {file}: not a SentencePiece model"),
    ("merge-corpus-missing", MERGE + ["--base_tokenizer_dir", "{tok}", "--target_tokenizer_dir", "{root}/out",
                                      "--corpus", "{root}/nope.jsonl"], "--corpus {root}/nope.jsonl"),
    ("merge-donor-vocab-too-small", MERGE + ["--base_tokenizer_dir", "{tok}", "--target_tokenizer_dir", "{root}/out",
                                             "--corpus", "{text}", "--donor_vocab_size", "100"], "--donor_vocab_size 100"),
    ("init-source-not-a-model", INIT + ["--source_model_and_tokenizer_path", "{tok}", "--target_tokenizer_path",
                                        "{tok}", "--target_model_path", "{root}/out"], "no config.json"),
    ("init-target-tokenizer-missing", INIT + ["--source_model_and_tokenizer_path", "{model}",
                                              "--target_tokenizer_path", "{root}/nope", "--target_model_path",
                                              "{root}/out"], "--target_tokenizer_path {root}/nope"),
    ("init-onto-source", INIT + ["--source_model_and_tokenizer_path", "{model}", "--target_tokenizer_path", "{tok}",
                                 "--target_model_path", "{model}"], "--target_model_path {model}: is the input"),
    ("export-missing", EXPORT + ["--checkpoint", "{root}/nope", "--output_dir", "{root}/out"], "--checkpoint"),
    ("export-file", EXPORT + ["--checkpoint", "{file}", "--output_dir", "{root}/out"], "is a file"),
    ("export-not-a-checkpoint", EXPORT + ["--checkpoint", "{empty}", "--output_dir", "{root}/out"],
     "neither a checkpoint"),
    ("export-truncated-weights", EXPORT + ["--checkpoint", "{truncated}", "--output_dir", "{root}/out"],
     "model.safetensors: damaged weights file"),
    ("export-into-save-dir", EXPORT + ["--checkpoint", "{ckpt}/step-2", "--output_dir", "{ckpt}"], "contains the input"),
    ("export-tokenizer-missing", EXPORT + ["--checkpoint", "{ckpt}/step-2", "--output_dir", "{root}/out",
                                           "--tokenizer_dir", "{empty}"], "--tokenizer_dir"),
    ("perplexity-not-a-model", PPL + ["--model", "{tok}", "--data", "{text}"], "--model {tok}: not a model folder"),
    ("perplexity-no-tokenizer", PPL + ["--model", "{ckpt}/step-2/modeling", "--data", "{text}"], "has no tokenizer"),
    ("perplexity-data-missing", PPL + ["--model", "{model}", "--data", "{root}/nope.jsonl"], "--data"),
    ("perplexity-data-not-prepared", PPL + ["--model", "{model}", "--data", "{empty}"],
     "--data {empty}: not a prepared dataset (no manifest.json)"),
    ("perplexity-max-length-0", PPL + ["--model", "{model}", "--data", "{text}", "--max_length", "0"], "--max_length 0"),
    ("inference-missing", INFER + ["--model_path", "{root}/nope", "--input_txt", "hi"], "--model_path {root}/nope"),
    ("inference-file", INFER + ["--model_path", "{file}", "--input_txt", "hi"], "is a file"),
    ("inference-max-new-tokens-negative", INFER + ["--model_path", "{model}", "--input_txt", "hi",
                                                   "--max_new_tokens", "-1"], "--max_new_tokens -1"),
    ("inference-temperature-negative", INFER + ["--model_path", "{model}", "--input_txt", "hi", "--temperature", "-1"],
     "--temperature"),
    ("demo-output-is-a-file", ["-m", "colossal_hammer.demo.pipeline", "--scale", "test", "--output_dir", "{file}"],
     "--output_dir {file}: is a file"),
    ("upcycle-nan-router-std", ["-m", "colossal_hammer.model.upcycle", "--model", "{model}", "--output_dir",
                                "{root}/out", "--router_init_std", "nan"], "--router_init_std nan"),
    ("extend-nan-score", EXTEND + ["--source_tokenizer_dir", "{tok}", "--target_tokenizer_dir", "{root}/out",
                                   "--expand_tokens_file", "{pieces}", "--new_piece_score", "nan"],
     "--new_piece_score nan: give a finite number"),
    ("plan-nan-tokens", ["-m", "colossal_hammer.plan", "--gpu", "a100-80g", "--model_config", "llama2-7b", "--tokens",
                         "nan"], "--tokens nan: give a finite number"),
    ("inference-top-p-0", INFER + ["--model_path", "{model}", "--input_txt", "hi", "--top_p", "0"], "--top_p"),
    # a tokenizer extended without init_embeddings: ids past the embedding ended in a raw IndexError
    ("perplexity-embedding-smaller-than-tokenizer", PPL + ["--model", "{small_vocab}", "--data", "{text}"],
     "--model {small_vocab}: its embedding has 260 rows but its tokenizer 2,500 tokens"),
    ("choice-embedding-smaller-than-tokenizer", CHOICE + ["--model", "{small_vocab}", "--data", "{questions}"],
     "--model {small_vocab}: its embedding has 260 rows but its tokenizer 2,500 tokens"),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Every input the cases read, under one folder whose content is compared before and after."""
    root = tmp_path_factory.mktemp("inputs")
    sprinkle = [s for sentences in corpora.chinese_news().values() for s in sentences[:10]]
    base_tokenizer.build_base_tokenizer(corpora.english_paragraphs()[:300] + sprinkle, str(root / "tok"),
                                        vocab_size=2500)
    shutil.copy(root / "tok" / "tokenizer.model", root / "donor.model")
    save_tiny_llama(str(root / "tok"), root / "model")
    save_tiny_llama(str(root / "tok"), root / "small_vocab", vocab_size=260)  # byte pieces and a few more only
    step = root / "ckpt" / "step-2" / "modeling"  # what a --model_config run saves: no tokenizer
    step.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(root / "model" / name, step / name)
    truncated = root / "truncated" / "modeling"
    truncated.mkdir(parents=True)
    shutil.copy(root / "model" / "config.json", truncated / "config.json")
    (truncated / "model.safetensors").write_bytes((root / "model" / "model.safetensors").read_bytes()[:4096])
    (root / "empty").mkdir()
    (root / "a_file.txt").write_text("not a model\n")
    (root / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    (root / "text.jsonl").write_text(json.dumps({"text": "hello world 你好世界"}, ensure_ascii=False) + "\n")
    (root / "questions.jsonl").write_text(json.dumps({"question": "哪个是水果？", "A": "苹果", "B": "汽车", "C": "桌子",
                                                      "D": "电脑", "answer": "A"}, ensure_ascii=False) + "\n")
    (root / "pieces.jsonl").write_text(json.dumps({"piece": "甲"}, ensure_ascii=False) + "\n")
    return root


def snapshot(root):
    """Path -> content hash of every file and folder under root."""
    out = {}
    for folder, dirs, files in os.walk(root):
        out[os.path.relpath(folder, root)] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(root, argv, expected):
    names = {"root": root, "tok": root / "tok", "model": root / "model", "ckpt": root / "ckpt", "empty": root / "empty",
             "file": root / "a_file.txt", "latin1": root / "latin1.txt", "text": root / "text.jsonl",
             "pieces": root / "pieces.jsonl", "truncated": root / "truncated", "donor": root / "donor.model",
             "small_vocab": root / "small_vocab", "questions": root / "questions.jsonl"}
    argv = [a.format(**names) for a in argv]
    before = snapshot(root)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert expected.format(**names) in errors[0]
    assert snapshot(root) == before
