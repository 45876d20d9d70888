"""perplexity: per-file and per-category loss, perplexity and bits per byte, consistent with HF's loss."""

import json
import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from colossal_hammer.eval.perplexity import main as evaluate_main
from tests.conftest import save_tiny_llama


def test_report_matches_the_model_loss(tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    save_tiny_llama(tokenizer_dir, tmp_path / "m")
    docs = [("zh", "我们研究人工智能技术。"), ("zh", "今天的比赛非常精彩。"), ("en", "The quick brown fox.")]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t, "category": c}, ensure_ascii=False)
                                                for c, t in docs), encoding="utf-8")
    (tmp_path / "e.txt").write_text("Hello world\n\nSecond line here\n", encoding="utf-8")
    report = evaluate_main(["--model", str(tmp_path / "m"), "--data", f"{tmp_path / 'd.jsonl'},{tmp_path / 'e.txt'}",
                            "--max_length", "8", "--output", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert set(report) == {"file:d.jsonl", "file:e.txt", "category:zh", "category:en", "category:e.txt"}

    # the same figure by HF's own loss over whole documents (windows of 8 must not change it much:
    # each window restarts its context, so it can only be close, and exactly equal when a doc fits)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    nll = tokens = 0
    for _, text in docs[:2]:
        ids = torch.tensor([[tok.bos_token_id] + tok(text, add_special_tokens=False).input_ids])
        with torch.no_grad():
            loss = model(ids, labels=ids).loss.item()
        nll += loss * (ids.shape[1] - 1)
        tokens += ids.shape[1] - 1
    zh = report["category:zh"]
    assert zh["tokens"] == tokens
    nbytes = sum(len(t.encode()) for _, t in docs[:2])
    assert zh["bytes"] == nbytes
    assert math.isclose(zh["bits_per_byte"], zh["loss"] * zh["tokens"] / math.log(2) / nbytes, rel_tol=1e-9)
    assert math.isclose(zh["perplexity"], math.exp(zh["loss"]), rel_tol=1e-9)
    full = evaluate_main(["--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.jsonl"), "--max_length", "512"])
    assert math.isclose(full["category:zh"]["loss"], nll / tokens, rel_tol=1e-5)


def test_prepared_dataset_equals_scoring_each_document_alone(tokenizer_dir, tmp_path):
    """A packed row scored with the document mask equals each document piece run through HF on its own."""
    from colossal_hammer.data.loader import BinnedDataset
    from colossal_hammer.data.pretrain import main as prepare_pretrain
    from colossal_hammer.data import corpora
    from colossal_hammer.eval.token_bytes import byte_lengths
    from tests.conftest import write_jsonl

    news = corpora.chinese_news()
    write_jsonl(tmp_path / "raw" / "a.jsonl", [{"target": s, "category": c} for c in ("体育", "科技") for s in news[c][:6]])
    prepare_pretrain(["--data_input_dirs", str(tmp_path / "raw"), "--tokenizer_dir", tokenizer_dir, "--data_output_dirs",
                      str(tmp_path / "pt"), "--max_length", "48", "--num_spliced_dataset_bins", "1", "--num_workers", "1"])
    save_tiny_llama(tokenizer_dir, tmp_path / "m")
    report = evaluate_main(["--model", str(tmp_path / "m"), "--data", str(tmp_path / "pt")])

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    table = byte_lengths(AutoTokenizer.from_pretrained(tokenizer_dir))
    data = BinnedDataset([str(tmp_path / "pt")])
    sums = {}
    pieces = 0
    for part, (rows, category, _) in enumerate(data.parts):
        for row in rows:
            begin = 0
            for length in row["doc_lengths"]:
                ids = torch.tensor([row["input_ids"][begin:begin + length]])
                labels = torch.tensor(row["labels"][begin + 1:begin + length])  # a piece's first token: no loss
                begin += length
                pieces += 1
                keep = labels != -100
                if not keep.any():
                    continue
                with torch.no_grad():
                    logits = model(ids).logits[0, :-1].float()
                nll = torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
                entry = sums.setdefault(category, [0.0, 0, 0])
                entry[0] += nll
                entry[1] += int(keep.sum())
                entry[2] += int(table[labels[keep].numpy()].sum())
    assert pieces > len(data)  # rows hold several documents (and pieces of longer ones)
    for category, (nll, tokens, nbytes) in sums.items():
        r = report[f"category:{category}"]
        assert (r["tokens"], r["bytes"]) == (tokens, nbytes)
        assert math.isclose(r["loss"], nll / tokens, rel_tol=1e-5)
        assert math.isclose(r["bits_per_byte"], nll / math.log(2) / nbytes, rel_tol=1e-5)
    assert report["file:pt"]["tokens"] == sum(t for _, t, _ in sums.values())
