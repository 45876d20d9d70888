"""train.py --eval_dataset under ddp, zero2, gemini (sharded) and 3d pp2: the training losses are bit-identical
with and without evaluation (NEFTune draws noise from torch's RNG every step, so a stolen draw would show),
and the logged held-out figures are eval.perplexity's on the checkpoint of the same step."""

import json
import math

import pytest

from colossal_hammer.errors import InputError
from colossal_hammer.data.pretrain import main as prepare_pretrain
from colossal_hammer.data.sft import main as prepare_sft
from colossal_hammer.data import corpora
from colossal_hammer.eval.perplexity import evaluate
from tests.conftest import write_jsonl
from tests.distributed import launch, train
from tests.training.sft_data import tiny_model, uneven_sft_dataset

PREPARE = ["--max_length", "192", "--num_spliced_dataset_bins", "2", "--num_workers", "1"]
MAX_TOKENS = 700  # per category: a few rows of each, several eval batches per rank
CONFIGS = {
    "ddp": ["--plugin", "ddp", "--mixed_precision", "fp32"],
    "zero2": ["--plugin", "zero2", "--mixed_precision", "bf16"],
    "gemini": ["--plugin", "gemini", "--mixed_precision", "bf16"],
    "3d_pp2": ["--plugin", "3d", "--pp", "2", "--mixed_precision", "fp32"],
}
DP = {"ddp": 2, "zero2": 2, "gemini": 2, "3d_pp2": 1}
SHARDED_GEMINI = {"COLOSSAL_HAMMER_GEMINI_CHUNK_M": "0.01"}


@pytest.fixture(scope="module")
def setup(tokenizer_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("in_training_eval")
    news, english = corpora.chinese_news(), corpora.english_paragraphs()
    # held-out text: the training set (sft_data) uses the first 40 sentences of these categories
    write_jsonl(base / "pre-raw" / "a.jsonl", [{"target": s, "category": "体育"} for s in news["体育"][-30:]]
                + [{"target": p, "category": "english"} for p in english[-20:]])
    prepare_pretrain(["--data_input_dirs", str(base / "pre-raw"), "--tokenizer_dir", tokenizer_dir,
                      "--data_output_dirs", str(base / "heldout_pre"), *PREPARE])
    write_jsonl(base / "sft-raw" / "a.jsonl", [
        {"messages": [{"from": "human", "content": f"问题{i}：{s[:12]}？"}, {"from": "assistant", "content": s[:40]}],
         "category": "qa"} for i, s in enumerate(news["科技"][-25:])])
    prepare_sft(["--data_input_dirs", str(base / "sft-raw"), "--tokenizer_dir", tokenizer_dir,
                 "--data_output_dirs", str(base / "heldout_sft"), *PREPARE])
    return {"base": base, "data": uneven_sft_dataset(tokenizer_dir, base / "train", samples=16),
            "model": tiny_model(tokenizer_dir, base / "model")}


def flags(setup):
    return ["--pretrained", setup["model"], "--dataset", setup["data"], "--max_length", "192", "--batch_size", "2",
            "--lr", "2e-3", "--seed", "5", "--use_neft", "--save_interval", "2"]


def eval_flags(setup):
    return ["--eval_dataset", f"pre={setup['base'] / 'heldout_pre'}", f"sft={setup['base'] / 'heldout_sft'}",
            "--eval_interval", "2", "--eval_max_tokens", str(MAX_TOKENS)]


# ddp and the pipeline path (execute_pipeline without an optimizer) by default; zero2 and gemini with the
# slow tests
@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in ("ddp", "3d_pp2") else pytest.mark.slow)
                                  for n in CONFIGS])
def test_eval_leaves_training_alone_and_matches_perplexity(name, setup, tmp_path):
    env = SHARDED_GEMINI if name == "gemini" else {}
    args = flags(setup) + CONFIGS[name]
    plain = train(args + ["--save_dir", tmp_path / "plain"], tmp_path / "plain-logs", env=env)
    run = train(args + eval_flags(setup) + ["--save_dir", tmp_path / "ckpt"], tmp_path / "logs", env=env)
    steps, evals = run["records"], run["evals"]
    # (a) the same training, bit for bit
    assert [r["loss"] for r in steps] == [r["loss"] for r in plain["records"]]
    assert [r["grad_norm"] for r in steps] == [r["grad_norm"] for r in plain["records"]]
    # 16 samples / (batch 2 x dp): 4 or 8 steps; evaluated every 2, the last step once
    assert len(steps) == 16 // (2 * DP[name]) and [r["step"] for r in evals] == list(range(2, len(steps) + 1, 2))

    # (b) the figures of eval.perplexity on the checkpoint of the same step
    worst = 0.0
    for record in evals:
        for set_name, folder in (("pre", "heldout_pre"), ("sft", "heldout_sft")):
            report = evaluate(str(tmp_path / "ckpt" / f"step-{record['step']}"), [str(setup["base"] / folder)],
                              max_tokens=MAX_TOKENS)
            pairs = [(f"eval/{set_name}", report[f"file:{folder}"])]
            pairs += [(f"eval/{set_name}/{key[len('category:'):]}", r) for key, r in report.items()
                      if key.startswith("category:")]
            assert len(pairs) == (3 if set_name == "pre" else 2)
            for prefix, r in pairs:
                assert record[f"{prefix}/tokens"] == r["tokens"] > 0 and record[f"{prefix}/bytes"] == r["bytes"] > 0
                for ours, theirs in ((record[f"{prefix}/loss"], r["loss"]), (record[f"{prefix}/bpb"], r["bits_per_byte"])):
                    assert math.isfinite(ours)
                    worst = max(worst, abs(ours - theirs) / abs(theirs))
    print(f"\n{name}: largest relative difference to eval.perplexity {worst:.2e}")
    assert worst <= 1e-4
    # the held-out curve moves with training
    assert evals[0]["eval/sft/loss"] != evals[1]["eval/sft/loss"]


BENCH = ["--model_config", "tiny", "--benchmark", "--num_samples", "4", "--plugin", "ddp", "--max_length", "192"]


@pytest.mark.parametrize("item, extra, message", [
    ("heldout", [], "error: --eval_dataset heldout: give NAME=DIR"),  # refused by the flags' check
    ("x={pre}", ["--eval_tokenizer_dir", "{tok}"], "outside the model's vocabulary of 512"),  # by rank 0's preflight
])
def test_bad_eval_dataset_is_one_line(item, extra, message, setup, tokenizer_dir, tmp_path):
    where = dict(pre=setup["base"] / "heldout_pre", tok=tokenizer_dir)
    args = BENCH + ["--eval_dataset", item.format(**where), *(e.format(**where) for e in extra)]
    proc = launch(args + ["--save_dir", tmp_path / "c"], tmp_path / "logs", nproc=1)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout


@pytest.mark.parametrize("item, extra, message", [
    ("x={missing}", [], "error: --eval_dataset x={missing}: no such folder"),
    ("x={model}", [], "error: --eval_dataset x={model}: not a prepared dataset (no manifest.json)"),
    ("x={pre}", [], "error: --eval_tokenizer_dir: the model comes without a tokenizer"),
    ("x={pre}", ["--eval_tokenizer_dir", "{tok}", "--max_length", "64"], "prepared with --max_length 192"),
    ("x={pre}", ["--eval_tokenizer_dir", "{model}"], None),  # the model folder holds the same tokenizer
    ("x={pre} x={pre}", [], "error: --eval_dataset x={pre}: the name 'x' is given twice"),
    ("a/b={pre}", [], "the name 'a/b' contains '/'"),
])
def test_preflight_checks_each_eval_set(item, extra, message, setup, tokenizer_dir, tmp_path):
    from colossal_hammer.training import preflight
    from colossal_hammer.training.config import parse_config

    where = dict(missing=tmp_path / "nothing", model=setup["model"], pre=setup["base"] / "heldout_pre", tok=tokenizer_dir)
    argv = [*map(str, BENCH), "--eval_dataset", *item.format(**where).split(), *(e.format(**where) for e in extra)]
    try:
        cfg = parse_config(argv)
        preflight.check_eval_sets(cfg, 3000, cfg.eval_tokenizer_dir)
    except InputError as e:
        assert message is not None, e
        expected = message.removeprefix("error: ").format(**where)  # train.py prints "error: " before it
        assert expected in str(e) and "\n" not in str(e), e
    else:
        assert message is None


def test_metrics_record_schema(setup):
    from colossal_hammer.eval.in_training import record_of
    import torch

    record = record_of(3, [("zh", "news"), ("zh", "law")], torch.tensor([[10.0, 5, 8], [2.0, 5, 2]], dtype=torch.float64))
    assert record["step"] == 3 and record["kind"] == "eval"
    assert record["eval/zh/tokens"] == 10 and record["eval/zh/bytes"] == 10
    assert math.isclose(record["eval/zh/loss"], 12.0 / 10) and math.isclose(record["eval/zh/bpb"], 12.0 / math.log(2) / 10)
    assert math.isclose(record["eval/zh/law/bpb"], 2.0 / math.log(2) / 2)
    json.dumps(record)


def test_eval_flags_need_an_eval_dataset():
    from colossal_hammer.training.config import parse_config

    for extra in (["--eval_interval", "5"], ["--eval_max_tokens", "-1", "--eval_dataset", "a=b"]):
        with pytest.raises(InputError) as e:
            parse_config([*BENCH, *extra])
        assert str(e.value).startswith("--eval_")
