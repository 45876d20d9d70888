"""prepare_*_dataset.py --clean_dedup/--clean_filters: the same dataset as cleaning first and preparing the cleaned
folder, the cleaning report in the manifest, nothing left beside the output."""

import json

from colossal_hammer.data import corpora
from colossal_hammer.data.clean.cli import clean
from colossal_hammer.data.pretrain import main as prepare_pretrain
from colossal_hammer.data.sft import main as prepare_sft
from tests.conftest import write_jsonl


def test_prepare_cleans_first_as_the_cleaner_does(tokenizer_dir, tmp_path):
    news = corpora.chinese_news()
    unique = [{"target": "\n".join(news[c][i * 5:(i + 1) * 5]), "category": c} for c in sorted(news) for i in range(3)]
    write_jsonl(tmp_path / "in" / "a.jsonl", unique[:15] + unique[:4])  # 4 exact copies
    write_jsonl(tmp_path / "in" / "b.jsonl", unique[15:] + [dict(unique[20], category="copies")])
    common = ["--tokenizer_dir", tokenizer_dir, "--max_length", "256", "--num_spliced_dataset_bins", "2",
              "--num_workers", "1"]
    manifest = prepare_pretrain(["--data_input_dirs", str(tmp_path / "in"), "--data_output_dirs",
                                 str(tmp_path / "out"), "--clean_dedup", "exact,minhash", "--clean_filters", "none",
                                 *common])
    assert manifest["totals"]["documents"] == len(unique)
    assert manifest["clean"]["totals"]["documents_in"] == len(unique) + 5
    assert manifest["clean"]["totals"]["documents_out"] == len(unique)
    assert manifest["settings"]["clean_dedup"] == "exact,minhash"
    assert sorted(manifest["files"]) == ["cleaned/00000.jsonl", "cleaned/00001.jsonl"]  # a shard per input file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # the cleaned shards are gone
    # the same as running the cleaner, then preparing its output
    clean(["--data_input_dirs", str(tmp_path / "in"), "--output_dir", str(tmp_path / "cleaned"), "--filters",
           "none", "--workers", "1"])
    by_hand = prepare_pretrain(["--data_input_dirs", str(tmp_path / "cleaned"), "--data_output_dirs",
                                str(tmp_path / "by_hand"), *common])
    assert by_hand["output_hash"] == manifest["output_hash"]
    report = json.loads((tmp_path / "cleaned" / "clean_report.json").read_text(encoding="utf-8"))
    assert report["totals"] == manifest["clean"]["totals"]


def test_prepare_sft_drops_duplicate_conversations(tokenizer_dir, tmp_path):
    texts = [s for c in sorted(corpora.chinese_news()) for s in corpora.chinese_news()[c][:2]]
    conversations = [{"messages": [{"from": "human", "content": "请复述。"}, {"from": "assistant", "content": t}]}
                     for t in texts]
    write_jsonl(tmp_path / "in" / "chat.jsonl", conversations + conversations[:3])
    manifest = prepare_sft(["--data_input_dirs", str(tmp_path / "in"), "--tokenizer_dir", tokenizer_dir,
                            "--data_output_dirs", str(tmp_path / "out"), "--max_length", "512", "--num_workers", "1",
                            "--num_spliced_dataset_bins", "1", "--clean_dedup", "exact", "--pack"])
    assert manifest["totals"]["documents"] == len(texts)
    (stage,) = manifest["clean"]["stages"]
    assert stage["stage"] == "exact" and stage["rules"] == {"duplicate": 3}
