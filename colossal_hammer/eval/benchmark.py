"""Multiple-choice benchmark files: C-Eval, CMMLU and MMLU folders, or one jsonl file, read into questions.

Layouts (per subject one CSV file in each split folder):
- C-Eval: dev/ val/ test/ with `<subject>_<split>.csv`, header `id,question,A,B,C,D,answer[,explanation]`;
  the test split's answers are withheld (empty), so score `--split val`.
- CMMLU:  dev/ test/ with `<subject>.csv`, header `,Question,A,B,C,D,Answer` (the first column an index).
- MMLU:   dev/ val/ test/ with `<subject>_<split>.csv`, no header: question,A,B,C,D,answer.
- jsonl:  rows with question, A, B, C, D, answer and optional subject (default: the file's name) and
  split ("dev" rows are few-shot examples, the rest are scored).
A folder may hold C-Eval's subject_mapping.json ({subject: [English name, Chinese name, category]}) to
name subjects in prompts. Column names are matched case-insensitively; other columns are ignored.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..errors import InputError

LETTERS = ("A", "B", "C", "D")
FIELDS = ("question",) + LETTERS + ("answer",)


@dataclass
class Question:
    question: str
    choices: List[str]  # the texts of A, B, C, D
    answer: int  # index into choices
    where: str  # "file:line", for messages


@dataclass
class Benchmark:
    tests: Dict[str, List[Question]]  # subject -> questions to score, subjects sorted
    dev: Dict[str, List[Question]]  # subject -> few-shot examples (may be empty)
    names: Dict[str, Tuple[str, str]]  # subject -> (English name, Chinese name) for prompts


def _question(cells: Dict[str, str], where: str) -> Question:
    answer = cells["answer"].strip().upper()
    if answer not in LETTERS:
        hint = "; C-Eval withholds its test answers: use --split val" if not answer else ""
        raise InputError(f"{where}: answer: {cells['answer']!r} is not one of A, B, C, D{hint}")
    if not cells["question"].strip():
        raise InputError(f"{where}: question: empty; give the question text")
    return Question(cells["question"], [cells[letter] for letter in LETTERS], LETTERS.index(answer), where)


def read_csv(path: str) -> List[Question]:
    """A C-Eval / CMMLU file (with a header naming the columns) or an MMLU file (six unnamed columns)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        rows, start = [], 1
        try:
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append((start, row))
                start = reader.line_num + 1
        except csv.Error as e:
            raise InputError(f"{path}:{reader.line_num}: csv: {e}") from None
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
    if not rows:
        raise InputError(f"{path}:1: subject: the file has no questions; remove it or fill it")
    first = [cell.strip().lower() for cell in rows[0][1]]
    columns: Optional[Dict[str, int]] = None
    if "question" in first or "answer" in first:  # a header row (C-Eval, CMMLU)
        for field in FIELDS:
            if field.lower() not in first:
                raise InputError(f"{path}:{rows[0][0]}: {field}: missing column; the header needs "
                                 f"question, A, B, C, D, answer")
        columns = {field: first.index(field.lower()) for field in FIELDS}
        rows = rows[1:]
        if not rows:
            raise InputError(f"{path}:2: subject: the file has a header but no questions; remove it or fill it")
    questions = []
    for line, row in rows:
        if columns is None and len(row) != len(FIELDS):
            raise InputError(f"{path}:{line}: row: {len(row)} fields; a file without a header needs MMLU's six "
                             f"(question, A, B, C, D, answer), or add a header row naming the columns")
        index = columns or {field: i for i, field in enumerate(FIELDS)}
        if columns is not None and len(row) <= max(index.values()):
            missing = next(field for field, i in index.items() if i >= len(row))
            raise InputError(f"{path}:{line}: {missing}: missing column in this row")
        questions.append(_question({field: row[i] for field, i in index.items()}, f"{path}:{line}"))
    return questions


def _not_utf8(path: str) -> InputError:
    """Name the first line that is not UTF-8 (the text reader decodes in blocks, so it cannot say)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                break
    return InputError(f"{path}:{number}: text: not UTF-8; save the file as UTF-8")


def _lines(f, path: str):
    try:
        yield from enumerate(f, 1)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def read_jsonl(path: str) -> Tuple[Dict[str, List[Question]], Dict[str, List[Question]]]:
    default_subject = os.path.splitext(os.path.basename(path))[0]
    tests: Dict[str, List[Question]] = {}
    dev: Dict[str, List[Question]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in _lines(f, path):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{where}: json: {e.msg}; each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise InputError(f"{where}: json: not an object; give question, A, B, C, D, answer")
            for field in FIELDS:
                if field not in row:
                    raise InputError(f"{where}: {field}: missing; each row needs question, A, B, C, D, answer")
            subject = row.get("subject", default_subject)
            if not isinstance(subject, str) or not subject.strip():
                raise InputError(f"{where}: subject: empty; name the subject or leave the field out")
            for field in FIELDS:
                # str() would score JSON null as the text "None"; numbers are text enough (a choice may be 42)
                value = row[field]
                if value is None or isinstance(value, (bool, list, dict)):
                    kind = "null" if value is None else type(value).__name__
                    raise InputError(f"{where}: {field}: {kind}; give it as text")
            cells = {field: str(row[field]) for field in FIELDS}
            target = dev if row.get("split") == "dev" else tests
            target.setdefault(subject.strip(), []).append(_question(cells, where))
    if not tests:
        raise InputError(f"{path}:1: subject: no questions to score in the file")
    return tests, dev


def _subject_files(folder: str, split: str) -> Dict[str, str]:
    files = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".csv"):
            continue
        subject = name[:-len(".csv")]
        if subject.endswith(f"_{split}"):
            subject = subject[:-len(f"_{split}")]
        files[subject] = os.path.join(folder, name)
    return files


def _names(path: str) -> Dict[str, Tuple[str, str]]:
    mapping = os.path.join(path, "subject_mapping.json")
    if not os.path.isfile(mapping):
        return {}
    with open(mapping, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{mapping}:{e.lineno}: json: {e.msg}") from None
    return {subject: (str(v[0]), str(v[1])) for subject, v in data.items() if isinstance(v, list) and len(v) >= 2}


def load(path: str, split: str = "test", shots: int = 0) -> Benchmark:
    """Read the split to score and, when shots are asked for, each subject's dev examples."""
    if os.path.isfile(path):
        tests, dev = read_jsonl(path)
        names: Dict[str, Tuple[str, str]] = {}
    else:
        split_dir = os.path.join(path, split)
        if not os.path.isdir(split_dir):
            if split == "test" and os.path.isdir(os.path.join(path, "val")):  # C-Eval as its users download it
                raise InputError(f"--data {path}: has no test/ folder (C-Eval withholds its test answers); "
                                 f"score --split val")
            raise InputError(f"--data {path}: no {split}/ folder in it; give a C-Eval, CMMLU or MMLU folder "
                             f"(dev/, val/, test/ of per-subject CSV files) or a .jsonl file")
        files = _subject_files(split_dir, split)
        if not files:
            raise InputError(f"--data {path}: no .csv files in {split}/")
        tests = {subject: read_csv(file) for subject, file in files.items()}
        dev = {}
        if shots:
            dev_dir = os.path.join(path, "dev")
            dev_files = _subject_files(dev_dir, "dev") if os.path.isdir(dev_dir) else {}
            for subject in tests:
                if subject not in dev_files:
                    raise InputError(f"--shots {shots}: no dev/{subject}_dev.csv or dev/{subject}.csv in {path}; "
                                     f"few-shot examples come from the dev split (or use --shots 0)")
                dev[subject] = read_csv(dev_files[subject])
        names = _names(path)
    if shots:
        for subject in tests:
            if not dev.get(subject):
                raise InputError(f"--shots {shots}: subject {subject} has no dev examples (jsonl rows with "
                                 f"\"split\": \"dev\"); use --shots 0")
    return Benchmark(dict(sorted(tests.items())), dev, names)
