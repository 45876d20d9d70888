"""train.py on prepared datasets (pretrain packed, SFT padded), and train.example.sh as shipped."""

import json
import os
import subprocess
import sys

from colossal_hammer.data.pretrain import main as prepare_pretrain
from colossal_hammer.data.sft import main as prepare_sft
from colossal_hammer.data import corpora
from tests.conftest import save_tiny_llama, write_jsonl
from tests.distributed import REPO, train

TOKENIZER_ARGS = ["--num_spliced_dataset_bins", "2", "--num_workers", "1"]


def tiny_model_dir(tokenizer_dir, out):
    return save_tiny_llama(tokenizer_dir, out, hidden=64, layers=2)


def test_pretrain_and_sft_datasets_train(tokenizer_dir, tmp_path):
    news = corpora.chinese_news()
    rows = [{"target": s, "category": c} for c in ("体育", "科技") for s in news[c][:40]]
    rows += [{"target": p, "category": "english"} for p in corpora.english_paragraphs()[:60]]
    write_jsonl(tmp_path / "raw" / "a.jsonl", rows)
    manifest = prepare_pretrain(["--data_input_dirs", str(tmp_path / "raw"), "--tokenizer_dir", tokenizer_dir,
                                 "--data_output_dirs", str(tmp_path / "pt"), "--max_length", "64", *TOKENIZER_ARGS])
    model = tiny_model_dir(tokenizer_dir, tmp_path / "model")
    run = train(["--pretrained", model, "--dataset", tmp_path / "pt", "--plugin", "zero2", "--max_length", "64",
                 "--batch_size", "2", "--max_steps", "6", "--lr", "3e-3", "--category_weights", "english=0.5",
                 "--save_dir", tmp_path / "ckpt"], tmp_path / "logs")
    assert len(run["losses"]) == 6 and run["losses"][-1] < run["losses"][0]
    # packed rows are full but for each category's last one: nearly all of the 6 steps x 4 rows x 64 are tokens
    assert 0.9 * 6 * 4 * 64 < sum(r["tokens"] for r in run["records"]) <= 6 * 4 * 64
    # the tokenizer travelled with the weights into the checkpoint
    assert (tmp_path / "ckpt" / "step-6" / "modeling" / "tokenizer.json").is_file()
    assert manifest["totals"]["rows"] >= 24

    chats = [{"messages": [{"from": "human", "content": f"第{i}个问题是什么？"},
                           {"from": "assistant", "content": s[:40]}], "category": "qa"}
             for i, s in enumerate(news["教育"][:40])]
    write_jsonl(tmp_path / "raw_sft" / "a.jsonl", chats)
    prepare_sft(["--data_input_dirs", str(tmp_path / "raw_sft"), "--tokenizer_dir", tokenizer_dir,
                 "--data_output_dirs", str(tmp_path / "sft"), "--max_length", "128", *TOKENIZER_ARGS])
    sft = train(["--load_weights_only", tmp_path / "ckpt" / "step-6", "--dataset", tmp_path / "sft", "--plugin",
                 "ddp", "--max_length", "128", "--batch_size", "2", "--max_steps", "4", "--use_neft",
                 "--save_dir", tmp_path / "ckpt_sft"], tmp_path / "logs_sft")
    assert len(sft["losses"]) == 4 and all(0 < r["padding_fraction"] < 1 for r in sft["records"])
    # the template the SFT rows were rendered with travels into the checkpoint's tokenizer, for inference
    template = json.loads((tmp_path / "sft" / "manifest.json").read_text())["chat_template"]
    tokenizer_config = json.loads((tmp_path / "ckpt_sft" / "step-4" / "modeling" / "tokenizer_config.json").read_text())
    assert template and tokenizer_config["chat_template"] == template


def test_train_example_script_runs_as_shipped(tokenizer_dir, tmp_path):
    write_jsonl(tmp_path / "raw" / "a.jsonl", [{"target": p, "category": "en"} for p in corpora.english_paragraphs()[:80]])
    prepare_pretrain(["--data_input_dirs", str(tmp_path / "raw"), "--tokenizer_dir", tokenizer_dir,
                      "--data_output_dirs", str(tmp_path / "pt"), "--max_length", "64", *TOKENIZER_ARGS])
    model = tiny_model_dir(tokenizer_dir, tmp_path / "model")
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "PRETRAINED": str(model), "DATASET": str(tmp_path / "pt"), "NPROC_PER_NODE": "2", "MAX_LENGTH": "64",
           "BATCH_SIZE": "2", "ACCUMULATION_STEPS": "2", "SAVE_INTERVAL": "2", "SAVE_DIR": str(tmp_path / "ckpt"),
           "LOG_DIR": str(tmp_path / "logs"), "MASTER_PORT": "29517"}
    proc = subprocess.run(["bash", str(REPO / "train.example.sh")], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    records = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert records and records[-1]["step"] >= 2
    assert any(p.name.startswith("step-") for p in (tmp_path / "ckpt").iterdir())
