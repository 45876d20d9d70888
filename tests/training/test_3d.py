"""Plugin 3d (HybridParallelPlugin) at the shapes where its own machinery engages, 2 real processes each.

An odd vocabulary under tp (padded at build, trimmed at export), a pipeline over rows of varying
length, the pipeline's micro-batch check, and all_to_all sequence parallelism's data-parallel size.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig

from colossal_hammer.errors import InputError
from colossal_hammer.data.loader import BinnedDataset, BucketSampler, PackedCollator
from colossal_hammer.data.random_data import RandomTokenDataset
from colossal_hammer.data.sft import main as prepare_sft
from colossal_hammer.data import corpora
from colossal_hammer.model.build import build_model
from colossal_hammer.model.export import export
from colossal_hammer.training.config import TrainConfig
from colossal_hammer.training.plugins import check_3d
from tests.conftest import write_jsonl
from tests.distributed import TINY, largest_difference, launch, train

FP32_TOL = 1e-3  # fp32 losses of two plugins over several steps: reduction order only
REF_TOL = 1e-5  # fp32 first-step loss against the same model run in this process


def tiny_llama(tokenizer_dir, out, vocab_size):
    """A 2-layer random Llama with the given vocabulary, saved with the tokenizer."""
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sft_data(tokenizer_dir, tmp_path_factory):
    """Chats of varying length: unpacked SFT rows, padded per batch under --padding_mode longest."""
    out = tmp_path_factory.mktemp("sft")
    news = corpora.chinese_news()["教育"]
    chats = [{"messages": [{"from": "human", "content": f"第{i}个问题是什么？"},
                           {"from": "assistant", "content": s[: 10 + 7 * (i % 9)]}], "category": "qa"}
             for i, s in enumerate(news[:16])]
    write_jsonl(out / "raw" / "a.jsonl", chats)
    prepare_sft(["--data_input_dirs", str(out / "raw"), "--tokenizer_dir", tokenizer_dir,
                 "--data_output_dirs", str(out / "data"), "--max_length", "128", "--num_spliced_dataset_bins", "1"])
    return out / "data"


# name -> (flags, vocabulary after padding to 64*tp). 3000 (the tokenizer's size) is not a multiple of
# 64*tp: unpadded, the shardformer pads it itself and Colossal-AI 0.5.0's save fails (tp: "parameter
# isn't evenly distributed"; ZeRO and pp: no attribute '_unpad_detach').
ODD_VOCAB_RUNS = {
    "tp2": (["--tp", "2", "--batch_size", "2", "--mixed_precision", "fp32"], 3072),
    "zero1": (["--zero_stage", "1", "--batch_size", "1", "--mixed_precision", "bf16"], 3008),
    "pp2": (["--pp", "2", "--batch_size", "2", "--mixed_precision", "fp32"], 3008),
}


@pytest.mark.parametrize("name", sorted(ODD_VOCAB_RUNS))
def test_odd_vocabulary_saves_and_exports_trimmed(name, tokenizer_dir, sft_data, tmp_path):
    flags, padded = ODD_VOCAB_RUNS[name]
    model = tiny_llama(tokenizer_dir, tmp_path / "model", vocab_size=3000)
    run = train(["--pretrained", model, "--dataset", sft_data, "--plugin", "3d", *flags, "--max_length", "128",
                 "--max_steps", "2", "--save_interval", "1", "--lr", "0", "--save_dir", tmp_path / "ckpt"],
                tmp_path / "logs")
    assert len(run["losses"]) == 2 and all(r["loss"] > 0 for r in run["records"])
    saved = json.loads((tmp_path / "ckpt" / "step-1" / "modeling" / "config.json").read_text())
    assert (saved["vocab_size"], saved["unpadded_vocab_size"]) == (padded, 3000)

    export(str(tmp_path / "ckpt" / "step-2"), str(tmp_path / "hf"))
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert exported["vocab_size"] == 3000 and "unpadded_vocab_size" not in exported
    # lr 0: the exported weights are the input model's (in the training precision), bit for bit:
    # padding, sharding, gathering and trimming kept every real row in its place.
    original = AutoModelForCausalLM.from_pretrained(model).state_dict()
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype="auto").state_dict()
    assert back.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(back[key], tensor.to(back[key].dtype)), key
    # the checkpoint itself holds the padded rows (zeros, never trained at lr 0)
    weights = {}
    for f in (tmp_path / "ckpt" / "step-2" / "modeling").glob("*.safetensors"):
        weights.update(load_file(f))
    head = next(v for k, v in weights.items() if k.endswith("lm_head.weight"))
    assert head.shape[0] == padded and torch.count_nonzero(head[3000:]) == 0


def first_rows(dataset, n: int, pad_id: int, max_length=None) -> dict:
    """The batch of the first step's n rows, in the order every plugin's sampler deals them."""
    sampler = BucketSampler(dataset, 1, 0, seed=42)
    sampler.set_epoch(0)
    order = list(iter(sampler))[:n]
    return PackedCollator(pad_id, max_length)([dataset[i] for i in order])


@pytest.fixture(scope="module")
def pp_runs(tokenizer_dir, sft_data, tmp_path_factory):
    """pp 2 over SFT rows padded per batch; ddp on request. Vocabulary 3072 = 48*64 (no padding),
    so that every plugin and the in-process reference run the very same model."""
    base = tmp_path_factory.mktemp("pp")
    model = tiny_llama(tokenizer_dir, base / "model", vocab_size=3072)
    common = ["--pretrained", model, "--dataset", sft_data, "--max_length", "128", "--padding_mode", "longest",
              "--max_steps", "4", "--mixed_precision", "fp32", "--lr", "1e-3"]
    runs = {"model": model, "common": common, "base": base}
    runs["pp"] = train(common + ["--plugin", "3d", "--pp", "2", "--batch_size", "2", "--microbatch_size", "1",
                                 "--save_dir", base / "ckpt_pp"], base / "logs_pp")
    return runs


def test_pp2_trains_on_rows_of_varying_length(pp_runs, sft_data):
    pp = pp_runs["pp"]
    assert pp["info"]["pp_size"] == 2 and len(pp["losses"]) == 4
    # rows really vary: each step pads its two rows to their longer one, and steps differ in length
    assert all(0 < r["padding_fraction"] for r in pp["records"])
    assert len({r["tokens"] for r in pp["records"]}) > 1
    # step 1 (before any update): one row per micro-batch, the rows' losses weighted by their label tokens
    dataset = BinnedDataset([str(sft_data)])
    batch = first_rows(dataset, 2, dataset.pad_id)
    model = AutoModelForCausalLM.from_pretrained(pp_runs["model"])
    rows = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(2)]
    with torch.no_grad():
        losses = [model(**row).loss.item() for row in rows]
    counts = [int((row["labels"][:, 1:] != -100).sum()) for row in rows]
    assert counts[0] != counts[1]  # else weighting by tokens and by rows could not be told apart
    expected = sum(loss * n for loss, n in zip(losses, counts)) / sum(counts)
    assert abs(pp["losses"][0] - expected) <= REF_TOL, (pp["losses"][0], losses, counts)


@pytest.mark.slow
def test_pp2_matches_ddp(pp_runs):
    base = pp_runs["base"]
    ddp = train(pp_runs["common"] + ["--plugin", "ddp", "--batch_size", "1", "--save_dir", base / "ckpt_ddp"],
                base / "logs_ddp")
    # one row per micro-batch (pp) or per rank (ddp): the same token-weighted mean
    for step, (a, b) in enumerate(zip(pp_runs["pp"]["losses"], ddp["losses"]), start=1):
        assert abs(a - b) <= FP32_TOL, f"step {step}: pp2 {a:.6f} vs ddp {b:.6f}"
    assert largest_difference(pp_runs["pp"]["records"], ddp["records"], "grad_norm") <= 1e-4  # fp32 (matrix: 1.6e-5)


def test_pp2_with_one_micro_batch_is_refused_in_one_line(tmp_path):
    proc = launch(TINY + ["--plugin", "3d", "--max_steps", "1", "--pp", "2", "--batch_size", "1"], tmp_path / "logs")
    assert proc.returncode != 0
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stdout[-3000:]
    assert errors[0].startswith("error: --pp 2 --batch_size 1 --accumulation_steps 1 --microbatch_size 1:")
    assert "use --batch_size 2" in errors[0]
    # the workers exit with status 2 and no traceback of their own (torchrun's agent prints its own)
    assert "exitcode: 2" in proc.stdout and "[rank0]: Traceback" not in proc.stdout
    assert "Number of microbatch" not in proc.stdout  # the schedule's assertion was never reached


SP = dict(enable_sequence_parallelism=True)


@pytest.mark.parametrize("fields, message", [
    (dict(pp=2, batch_size=3, microbatch_size=2), "error: --batch_size 3: must be a multiple of --microbatch_size 2"),
    (dict(pp=2, batch_size=2, microbatch_size=2),
     "error: --pp 2 --batch_size 2 --accumulation_steps 1 --microbatch_size 2:"),
    # the accumulation steps of an optimizer step go through the pipeline together
    (dict(pp=2, batch_size=1, accumulation_steps=2), None),
    (dict(sp=2), "error: --sp: a sequence-parallel size needs --enable_sequence_parallelism"),
    # rows of varying length (or an odd --max_length) cannot be split in 2 along the sequence
    (dict(sp=2, sp_mode="all_to_all", **SP), "error: --enable_sequence_parallelism --sp_mode all_to_all:"),
    (dict(sp=2, sp_mode="all_to_all", padding_mode="max_length", max_length=63, **SP), "a multiple of 2"),
    (dict(sp_mode="split_gather", padding_mode="max_length", **SP), "error: --sp_mode split_gather: splits rows"),
    (dict(tp=2, pp=2), "error: --tp 2 --pp 2 --sp 1: world size 2 is not divisible by tp*pp*sp = 4"),
    (dict(pp=2, batch_size=2), None),
    (dict(tp=2, sp_mode="split_gather", padding_mode="max_length", max_length=64, **SP), None),
    (dict(sp=2, sp_mode="all_to_all", padding_mode="max_length", max_length=64, **SP), None),
])
def test_3d_shapes_checked_at_start(fields, message, capsys):
    cfg = TrainConfig(plugin="3d", dataset=["data"], pretrained="model", **fields)
    if message is None:
        check_3d(cfg, world=2)
        return
    with pytest.raises(InputError) as refused:
        check_3d(cfg, world=2)
    # train.py prints it as "error: <message>", from rank 0 only
    assert message.removeprefix("error: ") in str(refused.value) and "\n" not in str(refused.value), refused.value


@pytest.fixture(scope="module")
def sp_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("sp")
    run = train(TINY + SP_FLAGS + ["--plugin", "3d", "--sp", "2", "--enable_sequence_parallelism", "--sp_mode",
                                   "all_to_all", "--batch_size", "2", "--save_dir", base / "ckpt"], base / "logs")
    return {"base": base, "run": run}


SP_FLAGS = ["--num_epochs", "1", "--mixed_precision", "fp32"]


def test_sp_all_to_all_reads_every_sample_once(sp_run):
    # 16 samples, one epoch. sp 2 on 2 ranks: both ranks hold the same rows (split along the
    # sequence), so there is one data-parallel replica and 2 rows per step make 8 steps.
    sp = sp_run["run"]
    assert sp["info"]["sp_size"] == 2 and sp["info"]["data_parallel_size"] == 1
    assert len(sp["records"]) == 8 and sum(r["tokens"] for r in sp["records"]) == 16 * 64
    # step 1 (before any update) is the loss of one process on the same 2 rows: causal attention
    # included (it was lost under SDPA), and the same rows read.
    model = build_model(None, "tiny", seed=42)
    batch = first_rows(RandomTokenDataset(16, 64, model.config.vocab_size, seed=42), 2, 0)
    with torch.no_grad():
        reference = model(**batch).loss.item()
    assert abs(sp["losses"][0] - reference) <= REF_TOL, (sp["losses"][0], reference)


@pytest.mark.slow
def test_sp_all_to_all_matches_ddp(sp_run):
    base = sp_run["base"]
    ddp = train(TINY + SP_FLAGS + ["--plugin", "ddp", "--batch_size", "1", "--save_dir", base / "ckpt_ddp"],
                base / "logs_ddp")
    assert len(ddp["records"]) == 8
    for step, (a, b) in enumerate(zip(sp_run["run"]["losses"], ddp["losses"]), start=1):
        assert abs(a - b) <= FP32_TOL, f"step {step}: sp all_to_all {a:.6f} vs ddp {b:.6f}"
    assert largest_difference(sp_run["run"]["records"], ddp["records"], "grad_norm") <= 1e-4
