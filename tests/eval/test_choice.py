"""eval.choice: multiple-choice accuracy on C-Eval / CMMLU / MMLU / jsonl files, equal to lm-eval's and
to a plain one-question-at-a-time computation; a model trained on the answers beats chance."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from colossal_hammer.eval.choice import evaluate, main
from tests.conftest import save_tiny_llama
from tests.distributed import REPO
from tests.eval.choice_data import LETTERS, questions, write_layouts


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    data = questions()
    return data, write_layouts(tmp_path_factory.mktemp("bench"), data)


@pytest.fixture(scope="module")
def tiny(tokenizer_dir, tmp_path_factory):
    return str(save_tiny_llama(tokenizer_dir, tmp_path_factory.mktemp("tiny") / "m"))


def test_layouts_and_folders_agree(bench, tiny, tmp_path, capsys):
    data, root = bench
    out = tmp_path / "r.json"
    reports = [main(["--model", tiny, "--data", str(root / "ceval"), "--split", "val", "--shots", "2",
                     "--batch_size", "3", "--output", str(out)])]
    printed = capsys.readouterr().out
    assert "average (macro)" in printed and "news_topic" in printed
    written = json.loads(out.read_text())
    assert {"accuracy", "subjects", "n", "chance"} <= set(written) and "scores" not in written
    for data_path in (root / "cmmlu", root / "mmlu", root / "bench.jsonl"):
        reports.append(evaluate(tiny, str(data_path), shots=2, batch_size=3))
    step = tmp_path / "save" / "step-3" / "modeling"  # a checkpoint's step folder
    shutil.copytree(tiny, step)
    reports.append(evaluate(str(step.parent), str(root / "mmlu"), shots=2, batch_size=3))
    assert written["n"] == sum(len(s["test"]) for s in data.values())
    assert written["chance"] == 0.25
    for r in reports:
        assert r["predictions"] == written["predictions"] and r["subjects"] == written["subjects"]
        assert r["accuracy"] == pytest.approx(sum(written["subjects"].values()) / 2)
    truth = {s: "".join(q["answer"] for q in splits["test"]) for s, splits in data.items()}
    for subject, predicted in written["predictions"].items():
        right = sum(p == t for p, t in zip(predicted, truth[subject]))
        assert written["subjects"][subject] == right / len(predicted)


def plain_scores(model_dir, data, method, shots):
    """The same scoring written plainly: one sequence per choice, no batching, no shared rows."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    result = {}
    for subject, splits in data.items():
        def block(q, answer):
            text = q["question"] + "".join(f"\n{x}. {q[x]}" for x in LETTERS) + "\n答案："
            return text + ((q["answer"] if method == "letter" else q[q["answer"]]) + "\n\n" if answer else "")

        head = f"以下是中国关于{subject.replace('_', ' ')}考试的单项选择题，请选出其中的正确答案。\n\n"
        scores = []
        for q in splits["test"]:
            prompt = head + "".join(block(d, True) for d in splits["dev"][:shots]) + block(q, False)
            row = []
            for x in LETTERS:
                whole = tok(prompt + (x if method == "letter" else q[x])).input_ids
                start = len(tok(prompt).input_ids)
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), -1)
                row.append(sum(float(logp[i - 1, whole[i]]) for i in range(start, len(whole))))
            scores.append(row)
        result[subject] = scores
    return result


def flat(rows):
    return [x for row in rows for x in row]


def choices_of(scores, subject_rows, method):
    picks = []
    for row, q in zip(scores, subject_rows):
        if method == "loglik":
            row = [s / len(q[x]) for s, x in zip(row, LETTERS)]
        picks.append(LETTERS[max(range(4), key=lambda i: (row[i], -i))])
    return "".join(picks)


@pytest.mark.parametrize("method,shots", [("letter", 2), ("loglik", 1)])
def test_equals_plain_computation(bench, tiny, method, shots):
    data, root = bench
    report = evaluate(tiny, str(root / "ceval"), shots=shots, method=method, batch_size=3, split="val")
    expected = plain_scores(tiny, data, method, shots)
    for subject, rows in expected.items():
        assert flat(report["scores"][subject]) == pytest.approx(flat(rows), abs=1e-4)
        assert report["predictions"][subject] == choices_of(rows, data[subject]["test"], method)


def test_equals_lm_eval(bench, tiny, tmp_path):
    """Same accuracy, same log-likelihood per choice and same choice per question as lm-eval's own
    multiple_choice scoring (acc for letters, acc_norm for texts) of a task written for it."""
    pytest.importorskip("lm_eval", reason="lm-eval is in the test extras: pip install -e .[test]")
    from tests.eval.lm_eval_task import lm_eval_scores

    data, root = bench
    runs = (("letter", 2, "zh"), ("loglik", 1, "zh"), ("letter", 1, "en"))
    references = lm_eval_scores(tiny, data, runs, tmp_path)
    for (method, shots, language), reference in references.items():
        report = evaluate(tiny, str(root / "cmmlu"), shots=shots, method=method, batch_size=4, language=language)
        assert set(reference) == set(report["subjects"])
        for subject, (accuracy, scores, prompts) in reference.items():
            assert report["subjects"][subject] == pytest.approx(accuracy, abs=1e-12)
            assert flat(report["scores"][subject]) == pytest.approx(flat(scores), abs=1e-4)
            assert report["predictions"][subject] == choices_of(scores, data[subject]["test"], method)


STEPS = 80  # plain AdamW on the 48 prompts: a few seconds


def test_trained_model_beats_chance_random_does_not(bench, tokenizer_dir, tmp_path):
    data, root = bench
    model_dir = save_tiny_llama(tokenizer_dir, tmp_path / "m")
    random_report = evaluate(str(model_dir), str(root / "bench.jsonl"))
    assert random_report["accuracy"] < 0.45  # chance is 0.25; 48 questions: 2.7 standard deviations above

    # teach it the answers: prompt + letter, loss on the letter only; plain torch, in this process
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    sequences = []
    for subject, splits in data.items():
        head = f"以下是中国关于{subject.replace('_', ' ')}考试的单项选择题，请选出其中的正确答案。\n\n"
        for q in splits["test"]:
            text = head + q["question"] + "".join(f"\n{x}. {q[x]}" for x in LETTERS) + "\n答案："
            sequences.append(tok(text + q["answer"]).input_ids)
    width = max(map(len, sequences))
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    last = torch.tensor([len(s) - 2 for s in sequences])  # the position that predicts the letter
    letters = torch.tensor([s[-1] for s in sequences])
    rows = torch.arange(len(sequences))
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(STEPS):
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[rows, last]
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden), letters)  # logits where needed only
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(tmp_path / "trained")
    tok.save_pretrained(tmp_path / "trained")
    trained = evaluate(str(tmp_path / "trained"), str(root / "bench.jsonl"))
    assert trained["accuracy"] >= 0.9, (float(loss), trained["subjects"])


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.mark.parametrize("name,files,expected", [
    ("missing column", {"val/s_val.csv": "id,question,A,B,D,answer\n1,q,a,b,d,A\n"}, "s_val.csv:1: C: missing column"),
    ("answer not A-D", {"test/s.csv": ",Question,A,B,C,D,Answer\n0,q,a,b,c,d,A\n1,q2,a,b,c,d,E\n"},
     "s.csv:3: answer: 'E' is not one of A, B, C, D"),
    ("withheld answers", {"test/s_test.csv": "id,question,A,B,C,D,answer\n1,q,a,b,c,d,\n"}, "use --split val"),
    ("empty subject", {"test/s_test.csv": "id,question,A,B,C,D,answer\n"}, "s_test.csv:2: subject: "),
    ("mmlu row", {"test/s_test.csv": "q,a,b,c,d,A\nq2,a,b,c,A\n"}, "s_test.csv:2: row: 5 fields"),
    ("jsonl empty subject", {"b.jsonl": '{"question":"q","A":"a","B":"b","C":"c","D":"d","answer":"A"}\n'
                                        '{"question":"q","A":"a","B":"b","C":"c","D":"d","answer":"B","subject":""}\n'},
     "b.jsonl:2: subject: empty"),
    ("not utf-8", {"test/s_test.csv": "q,a,b,c,d,A\n".encode("utf-8") + "问题,甲,乙,丙,丁,B\n".encode("gbk")},
     "s_test.csv:2: text: not UTF-8"),
    ("jsonl not utf-8", {"b.jsonl": '{"question":"q","A":"a","B":"b","C":"c","D":"d","answer":"A"}\n'.encode()
                                    + '{"question":"问","A":"a","B":"b","C":"c","D":"d","answer":"A"}\n'.encode("gbk")},
     "b.jsonl:2: text: not UTF-8"),
    ("jsonl missing field", {"b.jsonl": '{"question":"q","A":"a","B":"b","C":"c","answer":"A"}\n'},
     "b.jsonl:1: D: missing"),
    ("jsonl null question", {"b.jsonl": '{"question":"q","A":"a","B":"b","C":"c","D":"d","answer":"A"}\n'
                                        '{"question":null,"A":"a","B":"b","C":"c","D":"d","answer":"B"}\n'},
     "b.jsonl:2: question: null"),
])
def test_bad_files_name_file_line_field(tiny, tmp_path, capsys, name, files, expected):
    for relative, text in files.items():
        _write(tmp_path / "data" / relative, text)
    data = tmp_path / "data" / "b.jsonl" if "b.jsonl" in files else tmp_path / "data"
    split = "val" if any(r.startswith("val/") for r in files) else "test"
    with pytest.raises(SystemExit) as exit_:
        main(["--model", tiny, "--data", str(data), "--split", split])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1, err


def test_bad_flags(bench, tiny, tmp_path, capsys):
    _, root = bench
    shutil.copytree(root / "ceval", tmp_path / "ceval", ignore=lambda folder, names: ["test"])
    for argv, expected in ((["--data", str(root / "cmmlu"), "--split", "val"], "no val/ folder"),
                           (["--data", str(root / "cmmlu"), "--shots", "-1"], "--shots -1: must be 0 or more"),
                           (["--data", str(tmp_path / "ceval")],  # C-Eval as shipped with test/ left out
                            f"--data {tmp_path / 'ceval'}: has no test/ folder (C-Eval withholds its test answers); "
                            "score --split val"),
                           (["--data", str(tmp_path / "nope")], "no such file or folder"),
                           (["--data", str(root / "mmlu"), "--model", str(tmp_path)], "--model")):
        model = [] if "--model" in argv else ["--model", tiny]
        with pytest.raises(SystemExit) as exit_:
            main(model + argv)
        assert exit_.value.code == 2
        assert expected in capsys.readouterr().err


def test_command_line_error_is_one_line_before_torch(tiny, tmp_path):
    """`python -m colossal_hammer.eval.choice` on a bad file: exit 2, one line, and torch never loaded."""
    import os
    import subprocess
    import sys

    bad = _write(tmp_path / "d" / "test" / "s_test.csv", "id,question,A,B,C,D,answer\n1,q,a,b,c,d,E\n")
    code = ("import sys, runpy; sys.argv = sys.argv[1:]; "
            "exec('try:\\n runpy.run_module(\"colossal_hammer.eval.choice\", run_name=\"__main__\")\\n'"
            "'finally:\\n print(\"torch\" in sys.modules, file=sys.stderr)')")
    proc = subprocess.run([sys.executable, "-c", code, "choice", "--model", tiny, "--data", str(bad.parent.parent)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {bad}:2: answer: 'E' is not one of A, B, C, D", "False"]
