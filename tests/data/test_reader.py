"""read_documents / read_texts: the one reader of plain-text corpora (.txt, .jsonl, compressed or not)."""

import gzip

import pytest

from colossal_hammer.data.reader import iter_lines, read_documents, read_texts
from colossal_hammer.errors import InputError
from tests.conftest import write_jsonl


def test_jsonl_and_txt(tmp_path):
    path = write_jsonl(tmp_path / "held_out.jsonl", [{"text": "一", "category": "news"}, "", {"target": "two"}])
    assert read_documents(str(path)) == [("news", "一"), ("held_out.jsonl", "two")]
    assert read_texts(str(path)) == ["一", "two"]
    gz = tmp_path / "held_out.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert read_documents(str(gz)) == [("news", "一"), ("held_out.jsonl.gz", "two")]
    txt = tmp_path / "en.txt"
    txt.write_text("first line\n\nsecond line\r\n")
    assert read_documents(str(txt)) == [("en.txt", "first line"), ("en.txt", "second line")]
    assert read_texts(str(write_jsonl(tmp_path / "p.jsonl", [{"piece": "人工"}])), fields=("piece",)) == ["人工"]


@pytest.mark.parametrize("line, detail", [
    ('{"text": 3}', "field 'text' must be a string"),
    ('{"other": "x"}', "field 'text' is missing"),
    ('{"text": "  "}', "field 'text' is empty"),
    ("[1]", "expected a JSON object"),
    ('{"text": "x", "category": 1}', "field 'category' must be a string"),
])
def test_bad_rows_name_file_and_line(tmp_path, line, detail):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok"}, line])
    with pytest.raises(InputError, match=f"^{path}:2: {detail}"):
        read_documents(str(path))


def test_invalid_utf8_and_truncated_gzip(tmp_path):
    txt = tmp_path / "bad.txt"
    txt.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(InputError, match=f"^{txt}:2: invalid UTF-8"):
        read_documents(str(txt))
    data = gzip.compress(b"".join(b'{"text": "line %d"}\n' % i for i in range(5000)))
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"^{gz}: truncated"):
        list(iter_lines(str(gz)))


def test_zstd_every_frame_read_and_truncation_caught(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    lines = [b'{"text": "line %d"}' % i for i in range(20000)]
    # two frames, as concatenating compressed files or a parallel compressor gives
    data = b"".join(zstandard.ZstdCompressor().compress(b"\n".join(part) + b"\n")
                    for part in (lines[:12000], lines[12000:]))
    path = tmp_path / "a.jsonl.zst"
    path.write_bytes(data)
    assert [raw for _, raw in iter_lines(str(path))] == lines
    for cut in (len(data) // 3, len(data) - 3):  # inside the first frame, inside the last
        path.write_bytes(data[:cut])
        with pytest.raises(InputError, match=f"^{path}: truncated"):
            list(iter_lines(str(path)))
    damaged = bytearray(data)
    damaged[10:30] = bytes(20)
    path.write_bytes(bytes(damaged))
    with pytest.raises(InputError, match=f"^{path}: corrupt zstd data"):
        list(iter_lines(str(path)))
