"""prepare_sft_dataset.py: loss on assistant turns only, whole leading turns kept, optional packing; every
cut turn counted in the manifest; the chat template used recorded there."""

import json

from datasets import load_from_disk
from transformers import AutoTokenizer

from colossal_hammer.data.sft import LLAMA2_TEMPLATE, LLAMA3_TEMPLATE, main as prepare
from tests.conftest import write_jsonl

IGNORE = -100
CONVERSATION = {
    "messages": [
        {"from": "system", "content": "你是一个乐于助人的助手。"},
        {"from": "human", "content": "什么是人工智能？"},
        {"from": "assistant", "content": "人工智能是研究如何让计算机完成需要智能的任务的科学。"},
        {"from": "human", "content": "Give one example."},
        {"from": "assistant", "content": "Machine translation, for instance."},
    ],
    "category": "chat",
}


def run(tokenizer_dir, tmp_path, rows, *extra):
    write_jsonl(tmp_path / "in" / "chat.jsonl", rows)
    manifest = prepare(["--data_input_dirs", str(tmp_path / "in"), "--tokenizer_dir", tokenizer_dir,
                        "--data_output_dirs", str(tmp_path / "out"), "--num_spliced_dataset_bins", "1", *extra])
    rows = []
    for figures in manifest["categories"].values():
        rows.extend(load_from_disk(str(tmp_path / "out" / figures["dirname"] / "bin-00000")))
    return manifest, rows


def labelled_spans(row):
    """Maximal runs of labelled tokens."""
    spans, current = [], []
    for t in row["labels"]:
        if t == IGNORE:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(t)
    return spans + ([current] if current else [])


def test_only_assistant_turns_carry_labels(tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    _, (row,) = run(tokenizer_dir, tmp_path, [CONVERSATION], "--max_length", "512")
    spans = labelled_spans(row)
    replies = [m["content"] for m in CONVERSATION["messages"] if m["from"] == "assistant"]
    assert len(spans) == len(replies) and reply_ends(row)[-1] == len(row["labels"])
    for span, reply in zip(spans, replies):
        assert span[-1] == tok.eos_token_id  # the reply's end token is learned
        assert tok.decode(span[:-1]).strip() == reply
    # labels equal the input ids where set
    assert all(lab in (IGNORE, t) for lab, t in zip(row["labels"], row["input_ids"]))
    # the whole conversation round-trips through decode, every turn present in order
    text = tok.decode(row["input_ids"])
    positions = [text.index(m["content"]) for m in CONVERSATION["messages"]]
    assert positions == sorted(positions)
    for marker in ("[INST]", "[/INST]", "<<SYS>>"):
        assert marker in text and all(marker not in tok.decode(s) for s in spans)


SHORT = {"messages": [{"from": "human", "content": "hi"}, {"from": "assistant", "content": "hello"}],
         "category": "chat"}


def reply_ends(row):
    """Positions just after each labelled run (each reply's end token)."""
    labels = row["labels"]
    return [i + 1 for i, t in enumerate(labels) if t != IGNORE and (i + 1 == len(labels) or labels[i + 1] == IGNORE)]


def test_too_long_keeps_whole_leading_turns(tokenizer_dir, tmp_path):
    _, (full,) = run(tokenizer_dir, tmp_path / "a", [CONVERSATION], "--max_length", "512")
    ends = reply_ends(full)
    assert len(ends) == 2
    manifest, (cut,) = run(tokenizer_dir, tmp_path / "b", [CONVERSATION], "--max_length", str(ends[1] - 1))
    assert cut["input_ids"] == full["input_ids"][: ends[0]] and cut["labels"] == full["labels"][: ends[0]]
    # the cut exchange is counted: its two turns and every token they had in the full row
    entry = manifest["files"][str(tmp_path / "b" / "in" / "chat.jsonl")]
    assert entry["skipped"] == {} and entry["dropped_turns"] == {"too_long": 2}
    assert entry["dropped_tokens"] == {"too_long": ends[1] - ends[0]}
    assert manifest["totals"]["dropped_tokens"] == ends[1] - ends[0]
    # a conversation whose first exchange does not fit is skipped and counted, never cut mid-reply
    _, (short,) = run(tokenizer_dir, tmp_path / "c", [SHORT], "--max_length", "512")
    assert len(short["input_ids"]) < ends[0]
    manifest, rows = run(tokenizer_dir, tmp_path / "d", [CONVERSATION, SHORT], "--max_length",
                         str(len(short["input_ids"])), "--on_error", "skip")
    assert [r["input_ids"] for r in rows] == [short["input_ids"]]
    assert manifest["files"][str(tmp_path / "d" / "in" / "chat.jsonl")]["skipped"] == {"too_long": 1}


def test_pack_puts_several_conversations_in_a_row(tokenizer_dir, tmp_path):
    manifest, rows = run(tokenizer_dir, tmp_path, [SHORT] * 10, "--max_length", "64", "--pack")
    assert all(len(r["input_ids"]) == 64 for r in rows)
    assert len(rows) < 10 and sum(len(r["doc_lengths"]) for r in rows) >= 10
    assert manifest["totals"]["tokens_in"] == manifest["totals"]["tokens_out"]
    assert sum(len(labelled_spans(r)) for r in rows) >= 10


def test_llama3_builtin_template(tokenizer_dir, tmp_path):
    _, (row,) = run(tokenizer_dir, tmp_path, [CONVERSATION], "--max_length", "1024", "--llama_version", "3")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = tok.decode(row["input_ids"])
    assert "<|start_header_id|>assistant<|end_header_id|>" in text
    spans = [tok.decode(s) for s in labelled_spans(row)]
    assert len(spans) == 2 and all("assistant<|end_header_id|>" not in s for s in spans)
    assert all(s.endswith("<|eot_id|>") for s in spans)


def with_messages(*messages, base=CONVERSATION):
    return {"messages": [*base["messages"], *messages], "category": "chat"}


def dropped(manifest, tmp_path):
    entry = manifest["files"][str(tmp_path / "in" / "chat.jsonl")]
    return entry["dropped_turns"], entry["dropped_tokens"]


def test_empty_reply_is_cut_and_counted(tokenizer_dir, tmp_path):
    _, (full,) = run(tokenizer_dir, tmp_path / "full", [CONVERSATION], "--max_length", "512")
    first = reply_ends(full)[0]
    empty_second = {"messages": [*CONVERSATION["messages"][:4], {"from": "assistant", "content": "  "}],
                    "category": "chat"}
    manifest, (row,) = run(tokenizer_dir, tmp_path, [empty_second], "--max_length", "512")
    # "Give one example. -> </s>" is never trained on: the row ends after the first reply
    assert row["input_ids"] == full["input_ids"][:first] and row["labels"] == full["labels"][:first]
    turns, tokens = dropped(manifest, tmp_path)
    assert turns == {"empty_reply": 2}
    # the cut exchange had its prompt (about as long as in the full row) and an end token, but no reply text
    assert 0 < tokens["empty_reply"] < len(full["input_ids"]) - first


def test_system_message_the_template_drops_is_counted(tokenizer_dir, tmp_path):
    late_system = with_messages({"from": "system", "content": "Réponds en français."},
                                {"from": "human", "content": "Et un autre ?"},
                                {"from": "assistant", "content": "La traduction automatique."})
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    # Llama-2's template renders a system message only as the first turn: cut before it, counted
    manifest, (row,) = run(tokenizer_dir, tmp_path / "l2", [late_system], "--max_length", "512")
    _, (full,) = run(tokenizer_dir, tmp_path / "full", [CONVERSATION], "--max_length", "512")
    assert row["input_ids"] == full["input_ids"]
    turns, tokens = dropped(manifest, tmp_path / "l2")
    assert turns == {"dropped_by_template": 3}
    system_tokens = len(tok("Réponds en français.", add_special_tokens=False).input_ids)
    assert tokens["dropped_by_template"] > system_tokens + len(tok("La traduction automatique.").input_ids)
    # Llama-3's renders it where it is: nothing dropped, the system text is in the row
    manifest, (row,) = run(tokenizer_dir, tmp_path / "l3", [late_system], "--max_length", "1024",
                           "--llama_version", "3")
    assert dropped(manifest, tmp_path / "l3") == ({}, {})
    assert "Réponds en français." in tok.decode(row["input_ids"]) and len(labelled_spans(row)) == 3


def test_trailing_turn_without_reply_is_counted(tokenizer_dir, tmp_path):
    _, (full,) = run(tokenizer_dir, tmp_path / "full", [CONVERSATION], "--max_length", "512")
    manifest, (row,) = run(tokenizer_dir, tmp_path, [with_messages({"from": "human", "content": "And another?"})],
                           "--max_length", "512")
    assert row["input_ids"] == full["input_ids"]
    turns, tokens = dropped(manifest, tmp_path)
    assert turns == {"no_reply": 1} and tokens["no_reply"] >= 3
    assert manifest["totals"]["dropped_turns"] == 1


CUSTOM_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '### Question: ' + m['content'] + '\\n' }}"
                   "{% elif m['role'] == 'assistant' %}{{ '### Reply: ' + m['content'] + eos_token + '\\n' }}"
                   "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Reply: ' }}{% endif %}")


def test_manifest_records_the_chat_template_used(tokenizer_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert not tok.chat_template  # so the built-in ones are used below
    for version, template in ((2, LLAMA2_TEMPLATE), (3, LLAMA3_TEMPLATE)):
        manifest, _ = run(tokenizer_dir, tmp_path / str(version), [SHORT], "--llama_version", str(version))
        assert manifest["chat_template"] == template
        assert json.loads((tmp_path / str(version) / "out" / "manifest.json").read_text())["chat_template"] == template
    # a tokenizer's own template wins over --llama_version, and is the one recorded
    tok.chat_template = CUSTOM_TEMPLATE
    tok.save_pretrained(tmp_path / "tok")
    manifest, (row,) = run(str(tmp_path / "tok"), tmp_path / "own", [SHORT], "--llama_version", "3")
    assert manifest["chat_template"] == CUSTOM_TEMPLATE
    text = tok.decode(row["input_ids"])
    assert "### Question: hi" in text and "### Reply:" in text and "<|start_header_id|>" not in text
    # rendering with the recorded template gives the text the row was tokenized from
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                                       chat_template=manifest["chat_template"], tokenize=False)
    assert tok.decode(row["input_ids"]).replace(" ", "") == rendered.replace(" ", "")
