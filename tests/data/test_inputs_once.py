"""Every input file is read once, whatever paths lead to it: a folder named twice, a folder with its parent, a
symbolic link to a file already listed. Through the real prepare commands; the manifest lists each file once."""

import os

from colossal_hammer.data import corpora
from colossal_hammer.data.pretrain import main as prepare_pretrain
from colossal_hammer.data.reader import list_input_files
from colossal_hammer.data.sft import main as prepare_sft
from tests.conftest import write_jsonl


def corpus(root):
    news = corpora.chinese_news()
    write_jsonl(root / "zh" / "news.jsonl", [{"target": s, "category": c} for c in sorted(news) for s in news[c][:8]])
    english = corpora.english_paragraphs()[:30]
    write_jsonl(root / "en" / "docs.jsonl", [{"target": p, "category": "en"} for p in english])
    (root / "alias").mkdir()
    os.symlink(root / "zh" / "news.jsonl", root / "alias" / "same_news.jsonl")
    return 8 * len(news) + 30


def pretrain(tokenizer_dir, tmp_path, out, dirs):
    return prepare_pretrain(["--data_input_dirs", ",".join(dirs), "--tokenizer_dir", tokenizer_dir,
                             "--data_output_dirs", str(tmp_path / out), "--max_length", "128",
                             "--num_spliced_dataset_bins", "2", "--num_workers", "1"])


def test_each_file_once_through_prepare_pretrain(tokenizer_dir, tmp_path, capsys):
    data = tmp_path / "data"
    lines = corpus(data)
    once = pretrain(tokenizer_dir, tmp_path, "once", [str(data / "zh"), str(data / "en")])
    assert "read once" not in capsys.readouterr().err
    assert once["totals"]["documents"] == lines and len(once["files"]) == 2
    # the whole tree: the symbolic link in alias/ leads to zh/news.jsonl again
    tree = pretrain(tokenizer_dir, tmp_path, "tree", [str(data)])
    assert "each is read once" in capsys.readouterr().err
    for n, dirs in enumerate([[str(data), str(data)], [str(data), str(data / "zh")], [str(data / "zh"), str(data)],
                              [str(data / "en"), str(data / "alias"), str(data) + "/"]]):
        again = pretrain(tokenizer_dir, tmp_path, f"again{n}", dirs)
        assert again["totals"]["documents"] == lines, dirs
        assert again["output_hash"] == tree["output_hash"] == once["output_hash"], dirs
        assert len(again["files"]) == 2, (dirs, sorted(again["files"]))
        assert "each is read once" in capsys.readouterr().err, dirs
    assert tree["files"] == pretrain(tokenizer_dir, tmp_path, "twice", [str(data), str(data)])["files"]


def test_each_file_once_through_prepare_sft(tokenizer_dir, tmp_path):
    conversation = {"messages": [{"from": "human", "content": "你好"}, {"from": "assistant", "content": "你好！"}]}
    write_jsonl(tmp_path / "data" / "chat" / "a.jsonl", [conversation] * 5)
    manifest = prepare_sft(["--data_input_dirs", f"{tmp_path / 'data'},{tmp_path / 'data' / 'chat'}",
                            "--tokenizer_dir", tokenizer_dir, "--data_output_dirs", str(tmp_path / "out"),
                            "--max_length", "64", "--num_spliced_dataset_bins", "1", "--num_workers", "1"])
    assert list(manifest["files"]) == [str(tmp_path / "data" / "chat" / "a.jsonl")]
    assert manifest["totals"]["documents"] == manifest["totals"]["lines"] == 5


def test_the_name_kept_does_not_depend_on_the_order_of_the_folders(tmp_path):
    write_jsonl(tmp_path / "b" / "x.jsonl", [{"target": "t"}])
    os.symlink(tmp_path / "b", tmp_path / "a")
    forward = list_input_files([str(tmp_path / "a"), str(tmp_path / "b")])
    backward = list_input_files([str(tmp_path / "b"), str(tmp_path / "a")])
    assert forward == backward and [f.name for f in forward] == [str(tmp_path / "a" / "x.jsonl")]
    assert forward[0].path == os.path.realpath(tmp_path / "b" / "x.jsonl")
