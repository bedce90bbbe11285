import io
import json
from pathlib import Path

from audiocap_cli.records import RecordWriter, expand_inputs


def _touch(p: Path) -> str:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return str(p)


def test_expand_dirs_globs_stdin_and_missing(tmp_path: Path) -> None:
    a = _touch(tmp_path / "d" / "b.wav")
    b = _touch(tmp_path / "d" / "sub" / "a.MP3")
    _touch(tmp_path / "d" / "notes.txt")
    c = _touch(tmp_path / "e" / "c.flac")
    missing = str(tmp_path / "nope.wav")
    nomatch = str(tmp_path / "zz*.ogg")
    stdin = io.StringIO(f"{c}\n\n{a}\n")
    got = expand_inputs([str(tmp_path / "d"), str(tmp_path / "e" / "*.flac"), "-", missing, nomatch], stdin)
    assert got == [a, b, c, missing, nomatch]  # sorted dir walk, no txt, deduplicated, order kept


def test_resume_drops_errors_and_partial_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with RecordWriter(str(out)) as w:
        w.write([{"path": "a.wav", "caption": "a dog barks"}])
        w.write([{"path": "b.wav", "error": "not audio"}])
        w.write([{"path": "c.wav", "caption": "rain", "start": 0.0}, {"path": "c.wav", "caption": "wind", "start": 10.0}])
    with open(out, "a") as f:
        f.write('{"path": "d.wav", "capt')  # a kill mid-write
    w = RecordWriter(str(out), resume=True)
    assert w.done == {"a.wav", "c.wav"}
    w.write([{"path": "b.wav", "caption": "a cat"}])
    w.close()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == ["a.wav", "c.wav", "c.wav", "b.wav"]
    assert all("error" not in r for r in rows)


def test_csv_format_header_once(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    with RecordWriter(str(out), fmt="csv") as w:
        w.write([{"path": "a.wav", "caption": "a, b"}])
    with RecordWriter(str(out), fmt="csv", resume=True) as w:
        assert w.done == {"a.wav"}
        w.write([{"path": "b.wav", "caption": "c"}])
    assert out.read_text() == 'file_name,caption_predicted\na.wav,"a, b"\nb.wav,c\n'
