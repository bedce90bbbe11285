import dataclasses
import io
import json
import math
from pathlib import Path

import pytest

from audiocap_cli.errors import MetricsError
from audiocap_cli.pipeline.records import (
    CaptionRecord,
    Guide,
    RecordWriter,
    expand_inputs,
    match_predictions,
    read_predictions,
)


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
    got = expand_inputs(
        [str(tmp_path / "d"), str(tmp_path / "e" / "*.flac"), "-", missing, nomatch], stdin
    )
    assert got == [a, b, c, missing, nomatch]  # sorted dir walk, no txt, deduplicated, order kept


def test_resume_drops_errors_and_partial_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with RecordWriter(str(out)) as w:
        w.write([{"path": "a.wav", "caption": "a dog barks"}])
        w.write([{"path": "b.wav", "error": "not audio"}])
        w.write(
            [
                {"path": "c.wav", "caption": "rain", "start": 0.0},
                {"path": "c.wav", "caption": "wind", "start": 10.0},
            ]
        )
    with open(out, "a") as f:
        f.write('{"path": "d.wav", "capt')  # a kill mid-write
    w = RecordWriter(str(out), resume=True)
    assert w.done == {"a.wav", "c.wav"}
    w.write([{"path": "b.wav", "caption": "a cat"}])
    w.close()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == ["a.wav", "c.wav", "c.wav", "b.wav"]
    assert all("error" not in r for r in rows)


def test_resume_picks_up_a_windows_file_at_its_next_window(tmp_path: Path) -> None:
    """A long file in windows mode is written a chunk of windows at a time, its final window
    marked "last": a resumed windows-mode run skips the files that have it, goes on with a
    file that has not at its next window, and never writes a window it holds again."""
    out = tmp_path / "out.jsonl"

    def win(path: str, start: float, last: bool = False) -> dict[str, object]:
        rec = {"path": path, "start": start, "end": start + 10, "caption": f"at {start:g}"}
        return {**rec, "last": True} if last else rec

    with RecordWriter(str(out)) as w:
        w.write([win("done.wav", 0.0), win("done.wav", 10.0, last=True)])
        w.write([win("long.wav", 0.0), win("long.wav", 10.0)])  # then killed
        w.write([win("one.wav", 0.0)])  # its first window only: killed too
    w = RecordWriter(str(out), resume=True)
    assert w.done == {"done.wav", "long.wav", "one.wav"}  # crop mode: any record is the file
    assert w.is_done("done.wav", windows=True) and w.is_done("./done.wav", windows=True)
    assert not w.is_done("long.wav", windows=True) and not w.is_done("one.wav", windows=True)
    assert w.resumed_until("long.wav") == 10.0 and w.resumed_until("./long.wav") == 10.0
    assert w.resumed_until("one.wav") == 0.0 and w.resumed_until("new.wav") is None
    # A run that captions the whole file again (Ray's per-file batches) repeats nothing.
    w.write([win("long.wav", 0.0), win("long.wav", 10.0), win("long.wav", 20.0, last=True)])
    w.write([win("one.wav", 0.0), win("one.wav", 10.0, last=True)])
    w.close()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    keys = [(r["path"], r["start"]) for r in rows]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 7
    assert [r["start"] for r in rows if r["path"] == "long.wav"] == [0.0, 10.0, 20.0]
    assert CaptionRecord.from_json(rows[-1]).last and CaptionRecord.from_json(rows[0]).last is None


def test_csv_format_header_once(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    with RecordWriter(str(out), fmt="csv") as w:
        w.write([{"path": "a.wav", "caption": "a, b"}])
    with RecordWriter(str(out), fmt="csv", resume=True) as w:
        assert w.done == {"a.wav"}
        w.write([{"path": "b.wav", "caption": "c"}])
    assert out.read_text() == 'file_name,caption_predicted\na.wav,"a, b"\nb.wav,c\n'


# ---- the caption record ------------------------------------------------------------------------


def test_caption_record_json_line_format() -> None:
    ok = CaptionRecord(
        "a.wav",
        0.0,
        10.0,
        "a dog barks",
        confidence=0.25,
        tags=[("Dog", 0.93), ("Bark", 0.7)],
        guidance=[Guide("dogs bark", 0.25), Guide("a cat", None)],
    )
    assert list(ok.to_json().items()) == [
        ("path", "a.wav"),
        ("start", 0.0),
        ("end", 10.0),
        ("caption", "a dog barks"),
        ("confidence", 0.25),
        ("tags", [["Dog", 0.93], ["Bark", 0.7]]),
        (
            "guidance",
            [{"caption": "dogs bark", "distance": 0.25}, {"caption": "a cat", "distance": None}],
        ),
    ]
    assert CaptionRecord.from_json(json.loads(json.dumps(ok.to_json()))) == ok
    # a retrieved human caption printed instead of the decoder's says so, last; the decoder's says nothing
    got = dataclasses.replace(ok, retrieved=True).to_json()
    assert (
        list(got)[-1] == "retrieved"
        and got["retrieved"] is True
        and "retrieved" not in ok.to_json()
    )
    assert CaptionRecord.from_json(json.loads(json.dumps(got))).retrieved is True
    bad = CaptionRecord.failure("b.wav", "not audio", "InvalidAudioError")
    assert bad.to_json() == {
        "path": "b.wav",
        "error": "not audio",
        "error_type": "InvalidAudioError",
    }
    assert bad.failed and not ok.failed and CaptionRecord.from_json(bad.to_json()) == bad
    assert CaptionRecord.from_json({"file_name": "c.wav", "caption": "x"}) == CaptionRecord(
        "c.wav", caption="x"
    )
    for obj, why in (
        ([1], "not a JSON object"),
        ({"caption": "x"}, 'no "path"'),
        ({"path": "a"}, 'no "caption"'),
    ):
        with pytest.raises(ValueError, match=why):
            CaptionRecord.from_json(obj)


def test_per_clip_scores_one_writer(tmp_path: Path) -> None:
    from audiocap_cli.evaluation.evaluate import write_per_clip
    from audiocap_cli.evaluation.metrics import MetricsResult

    rows = {
        "Ours": MetricsResult(
            corpus={}, per_clip={"a": {"bleu_1": 0.5, "spice": math.nan}}, unavailable={}, n=1
        )
    }
    write_per_clip(tmp_path / "per_clip.jsonl", rows)
    text = (tmp_path / "per_clip.jsonl").read_text()
    assert "NaN" not in text and json.loads(text) == {
        "system": "Ours",
        "clip": "a",
        "bleu_1": 0.5,
        "spice": None,
    }
    write_per_clip(tmp_path / "only.jsonl", rows, keys=("bleu_1",))
    assert json.loads((tmp_path / "only.jsonl").read_text()) == {
        "system": "Ours",
        "clip": "a",
        "bleu_1": 0.5,
    }


# ---- prediction files and key matching --------------------------------------------------------


def test_read_jsonl_predictions(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    lines = [
        {"path": "/d/a.wav", "caption": "first try"},
        {"path": "/d/b.wav", "error": "cannot decode"},
        {"path": "/d/c.wav", "error": "timeout"},
        {"path": "/d/a.wav", "caption": "a dog barks", "segments": []},  # resumed run: last wins
        {"path": "/d/c.wav", "caption": "water runs"},  # retried after an error
    ]
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    preds = read_predictions(p)
    assert dict(preds) == {"/d/a.wav": "a dog barks", "/d/c.wav": "water runs"}
    assert preds.errors == {"/d/b.wav": "cannot decode"}

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"path": "a", "caption": "x"}\nnot json\n{"caption": "no path"}\n[1]\n{"path": "b"}\n'
    )
    with pytest.raises(MetricsError, match=r"4 malformed line\(s\): line 2: not JSON; line 3: no \"path\"; "
                                           r"line 4: not a JSON object; line 5"):  # fmt: skip
        read_predictions(bad)
    with pytest.raises(MetricsError, match="not found"):
        read_predictions(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    "text",
    [
        'file_name,caption_predicted\nx.wav,a dog barks\ny.wav,"water, running"\n',  # DCASE / aac-metrics
        'fname,caption\nx.wav,a dog barks\ny.wav,"water, running"\n',
        '\ufeffpath,caption\r\nx.wav,a dog barks\r\ny.wav,"water, running"\r\n',  # BOM, CRLF
    ],
)
def test_read_csv_predictions(tmp_path: Path, text: str) -> None:
    p = tmp_path / "preds.csv"
    p.write_text(text, encoding="utf-8")
    assert dict(read_predictions(p)) == {"x.wav": "a dog barks", "y.wav": "water, running"}


def test_read_csv_malformed(tmp_path: Path) -> None:
    p = tmp_path / "preds.csv"
    p.write_text("name,text\nx,y\n")
    with pytest.raises(MetricsError, match="needs a key column"):
        read_predictions(p)
    p.write_text("file_name,caption_predicted\nx.wav,a\nx.wav,b\ny.wav\n,c\n")
    with pytest.raises(MetricsError, match=r"line 3: x.wav repeats line 2; line 4: expected 2 fields; "
                                           r"line 5: empty file_name"):  # fmt: skip
        read_predictions(p)


def test_match_predictions() -> None:
    refs = {"clip1.wav": ["r"], "clip2.wav": ["r"], "Yabc": ["r"], "Yxyz": ["r"]}
    paths = {"Yabc": "/data/audio/Yabc_30.flac", "Yxyz": "/data/audio/Yxyz_0.flac"}
    preds = {
        "/some/where/clip1.wav": "p1",  # by file name
        "clip2": "p2",  # by stem
        "/data/audio/Yabc_30.flac": "p3",  # by audio path
        "Yxyz_0": "p4",  # by the stem of the audio path
        "/else/other.wav": "p5",
    }
    m = match_predictions(preds, refs, paths)
    assert m.predictions == {"clip1.wav": "p1", "clip2.wav": "p2", "Yabc": "p3", "Yxyz": "p4"}
    assert m.unmatched == ["/else/other.wav"] and m.missing == []
    m = match_predictions({"clip1.wav": "x"}, refs)
    assert m.missing == ["clip2.wav", "Yabc", "Yxyz"]
    with pytest.raises(MetricsError, match="both match clip clip1.wav"):
        match_predictions({"a/clip1.wav": "x", "b/clip1.wav": "y"}, refs)
    with pytest.raises(MetricsError, match="matches several clips"):
        match_predictions({"d": "x"}, {"a/d.wav": ["r"], "b/d.wav": ["r"]})
