"""datasets.py: AudioCaps / Clotho / generic manifests, split layout, audio lookup, validation."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from audiocap_cli.datasets import (
    Clip,
    find_manifest,
    load_split,
    read_captions,
    read_manifest,
    validate,
)
from audiocap_cli.errors import AudiocapError, DatasetError

CAPTIONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "captions"

AC_HEADER = ["audiocap_id", "youtube_id", "start_time", "caption"]


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # datasets.py never opens audio: an empty file is enough
    return path


def _problems(excinfo: pytest.ExceptionInfo[DatasetError]) -> str:
    return "\n".join(excinfo.value.problems)


# ----------------------------------------------------------------------------- AudioCaps


@pytest.fixture()
def audiocaps(tmp_path: Path) -> Path:
    root = tmp_path / "audiocaps"
    _csv(
        root / "train.csv",
        AC_HEADER,
        [
            ["1", "aaa", "30", "A dog barks"],
            ["2", "bbb", "0", "Rain falls, thunder rumbles"],
            ["3", "c-c_c", "120", " A car passes by "],
        ],
    )
    _csv(
        root / "val.csv",
        AC_HEADER,
        [
            ["11", "vvv", "10", "A man speaks"],
            ["12", "www", "20", "Birds chirp"],
            ["13", "vvv", "10", "Someone talks"],
            ["14", "www", "20", "Chirping"],
            ["15", "vvv", "10", "A man talks"],
        ],
    )
    # aac-datasets naming for train, one flac and one wav+flac (wav preferred), one AudioSet style.
    _touch(root / "audio" / "train" / "aaa_30.flac")
    _touch(root / "audio" / "train" / "bbb_0.flac")
    _touch(root / "audio" / "train" / "bbb_0.wav")
    _touch(root / "audio" / "train" / "Yc-c_c_120.000_130.000.wav")
    # audiocaps-download naming for val: <split>/<audiocap_id>.ogg (any of the clip's rows).
    _touch(root / "val" / "13.ogg")
    _touch(root / "val" / "12.ogg")
    return root


def test_audiocaps_train_one_caption_per_clip(audiocaps: Path) -> None:
    clips = load_split(audiocaps, "train")
    assert [c.id for c in clips] == ["aaa_30", "bbb_0", "c-c_c_120"]
    assert clips[2].captions == ("A car passes by",)  # stripped
    train = audiocaps / "audio" / "train"
    assert [c.path for c in clips] == [
        train / "aaa_30.flac",
        train / "bbb_0.wav",
        train / "Yc-c_c_120.000_130.000.wav",
    ]


def test_audiocaps_val_groups_rows_of_one_clip(audiocaps: Path) -> None:
    clips = load_split(audiocaps, "validation")  # Clotho's name for val works too
    assert [c.id for c in clips] == ["vvv_10", "www_20"]
    assert clips[0].captions == ("A man speaks", "Someone talks", "A man talks")
    assert clips[1].captions == ("Birds chirp", "Chirping")
    assert clips[0].path == audiocaps / "val" / "13.ogg"
    assert clips[1].path == audiocaps / "val" / "12.ogg"


def test_audiocaps_pattern_override(tmp_path: Path) -> None:
    root = tmp_path / "ac"
    _csv(root / "test.csv", AC_HEADER, [["1", "xyz", "40", "Wind blows"]])
    _touch(tmp_path / "elsewhere" / "clip-xyz-40s.mp3")
    clips = load_split(
        root, "test", audio_dir=tmp_path / "elsewhere", pattern="clip-{youtube_id}-{start_time}s"
    )
    assert clips[0].path == tmp_path / "elsewhere" / "clip-xyz-40s.mp3"
    with pytest.raises(DatasetError, match="no audio for 'xyz_40'"):
        load_split(root, "test", audio_dir=tmp_path / "elsewhere", pattern="{audiocap_id}.wav")


def test_missing_audio_listed_or_none(audiocaps: Path) -> None:
    (audiocaps / "audio" / "train" / "aaa_30.flac").unlink()
    with pytest.raises(DatasetError) as ei:
        load_split(audiocaps, "train")
    text = _problems(ei)
    assert "1 clip(s) without audio" in text and "'aaa_30'" in text and "bbb_0" not in text
    clips = load_split(audiocaps, "train", require_audio=False)
    assert clips[0].path is None and clips[1].path is not None


# ----------------------------------------------------------------------------- Clotho


@pytest.fixture()
def clotho(tmp_path: Path) -> Path:
    root = tmp_path / "clotho"
    header = ["file_name"] + [f"caption_{i}" for i in range(1, 6)]
    _csv(
        root / "clotho_captions_development.csv",
        header,
        [
            ["Rain, on roof.wav"] + [f"rain {i}" for i in range(5)],
            ["birds 01.wav"] + [f"birds {i}" for i in range(5)],
        ],
    )
    _csv(
        root / "clotho_captions_evaluation.csv", header, [["x.wav"] + [f"x {i}" for i in range(5)]]
    )
    _touch(root / "development" / "Rain, on roof.wav")
    _touch(root / "development" / "birds 01.flac")  # re-encoded by the user: found by stem
    _touch(root / "evaluation" / "x.wav")
    return root


def test_clotho_original_names(clotho: Path) -> None:
    clips = load_split(clotho, "train")
    assert [c.id for c in clips] == ["Rain, on roof.wav", "birds 01.wav"]
    assert clips[0].captions == tuple(f"rain {i}" for i in range(5))
    assert clips[0].path == clotho / "development" / "Rain, on roof.wav"
    assert clips[1].path == clotho / "development" / "birds 01.flac"
    assert [c.id for c in load_split(clotho, "test")] == ["x.wav"]
    assert find_manifest(clotho, "evaluation").name == "clotho_captions_evaluation.csv"


def test_clotho_problems_are_all_collected(tmp_path: Path) -> None:
    header = ["file_name"] + [f"caption_{i}" for i in range(1, 6)]
    m = _csv(
        tmp_path / "d" / "val.csv",
        header,
        [
            ["a.wav", "one", "", "three", "four", "five"],  # empty caption
            ["a.wav", "1", "2", "3", "4", "5"],  # duplicate
            ["b.wav", "1", "2", "3", "4", "5"],  # no audio
            ["c.wav", "1", "2"],  # short row
        ],
    )
    _touch(tmp_path / "d" / "audio" / "a.wav")
    with pytest.raises(DatasetError) as ei:
        read_manifest(m)
    text = _problems(ei)
    assert "line 2: empty caption" in text
    assert "line 3: duplicate file_name 'a.wav'" in text
    assert "no audio for 'b.wav'" in text
    assert "line 5: 3 fields, header has 6" in text
    assert str(m) in str(ei.value) and "\n" not in str(ei.value)


# ----------------------------------------------------------------------------- generic


def test_generic_csv_long_format_and_relative_paths(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    _csv(
        root / "train.csv",
        ["path", "caption"],
        [
            ["sounds/dog.wav", "A dog barks"],
            ["sounds/dog.wav", "Barking"],
            ["/abs/missing.wav", "nothing"],
            [str(_touch(tmp_path / "abs" / "cat.mp3")), "A cat meows"],
        ],
    )
    _touch(root / "sounds" / "dog.wav")
    with pytest.raises(DatasetError, match="no audio for '/abs/missing.wav'"):
        load_split(root, "train")
    clips = load_split(root, "train", require_audio=False)
    assert clips[0] == Clip(
        "sounds/dog.wav", root / "sounds" / "dog.wav", ("A dog barks", "Barking")
    )
    assert clips[1].path is None
    assert clips[2].path == tmp_path / "abs" / "cat.mp3"


def test_generic_jsonl_with_ids_lists_and_split_column(tmp_path: Path) -> None:
    m = tmp_path / "all.jsonl"
    rows = [
        {"id": "a", "path": "a.wav", "captions": ["first", "second"], "split": "train"},
        {"id": "b", "path": "b.flac", "caption": "only", "split": "validation"},
        {"id": "c", "path": "c.wav", "captions": ["x"], "split": "test"},
    ]
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    for n in "abc":
        _touch(tmp_path / "audio" / f"{n}.wav")
    _touch(tmp_path / "audio" / "b.flac")
    assert [c.id for c in load_split(m, "train")] == ["a"]
    assert load_split(m, "train")[0].captions == ("first", "second")
    assert [c.id for c in load_split(m, "val")] == ["b"]
    assert load_split(m, "val")[0].path == tmp_path / "audio" / "b.flac"
    assert len(read_manifest(m)) == 3


def test_generic_problems(tmp_path: Path) -> None:
    m = tmp_path / "bad.jsonl"
    m.write_text(
        '{"id": "a", "path": "a.wav", "caption": "x"}\n'
        "not json\n"
        '{"id": "a", "path": "other.wav", "caption": "y"}\n'
        '{"id": "b", "path": "b.wav", "captions": "[1, 2]"}\n'
        '{"id": "c", "path": "", "caption": "z"}\n'
        '["a", "list"]\n'
    )
    _touch(tmp_path / "a.wav")
    _touch(tmp_path / "b.wav")
    with pytest.raises(DatasetError) as ei:
        read_manifest(m)
    text = _problems(ei)
    for expected in (
        "line 2: invalid JSON",
        "line 3: duplicate id 'a' with a different path",
        "line 4: captions must be a list of strings",
        "line 5: empty path",
        "line 6: expected a JSON object",
    ):
        assert expected in text


def test_tsv_and_bom_and_captions_json_column(tmp_path: Path) -> None:
    m = tmp_path / "m.tsv"
    m.write_text('\ufeffpath\tcaptions\nx.wav\t["one", "two"]\n', encoding="utf-8")
    clips = read_manifest(m, require_audio=False)
    assert clips == [Clip("x.wav", None, ("one", "two"))]


def test_header_problems(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unrecognised header name,text"):
        read_manifest(_csv(tmp_path / "a.csv", ["name", "text"], [["x", "y"]]))
    with pytest.raises(DatasetError, match="missing column.* start_time"):
        read_manifest(_csv(tmp_path / "b.csv", ["youtube_id", "caption"], [["x", "y"]]))
    with pytest.raises(DatasetError, match="missing column.* path"):
        read_manifest(_csv(tmp_path / "c.csv", ["caption"], [["y"]]))
    with pytest.raises(DatasetError, match="empty file"):
        read_manifest(_touch(tmp_path / "d.csv"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        (tmp_path / "e.csv").write_bytes(b"path,caption\n\xff\xfe,x\n")
        read_manifest(tmp_path / "e.csv")
    with pytest.raises(DatasetError, match="not found"):
        read_manifest(tmp_path / "nope.csv")


def test_split_problems(audiocaps: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        load_split(audiocaps, "dev")
    with pytest.raises(DatasetError, match="no manifest for split 'test'"):
        load_split(audiocaps, "test")
    with pytest.raises(DatasetError, match="dataset directory not found"):
        load_split(tmp_path / "nowhere", "train")
    _csv(audiocaps / "development.csv", AC_HEADER, [["1", "a", "1", "x"]])
    with pytest.raises(DatasetError, match="several manifests for split 'train'"):
        load_split(audiocaps, "train")
    assert isinstance(DatasetError("x", ["y"]), AudiocapError)


# ----------------------------------------------------------------------------- text only


def test_read_captions_ignores_audio(audiocaps: Path, tmp_path: Path) -> None:
    clips = read_captions(audiocaps / "val.csv")
    assert [c.path for c in clips] == [None, None]
    assert sum(len(c.captions) for c in clips) == 5
    only_text = _csv(tmp_path / "t.csv", ["caption"], [["a"], ["b"]])
    assert [c.captions for c in read_captions(only_text)] == [("a",), ("b",)]


def test_validate_collects_everything(tmp_path: Path) -> None:
    good = _touch(tmp_path / "g.wav")
    clips = [
        Clip("a", good, ("x",)),
        Clip("a", good, ("y",)),
        Clip("b", None, ()),
        Clip("c", tmp_path / "gone.wav", ("  ",)),
    ]
    with pytest.raises(DatasetError) as ei:
        validate(clips, "mine")
    assert ei.value.problems == [
        "duplicate id 'a'",
        "clip 'b' has no caption",
        "clip 'b': audio unknown",
        "clip 'c' has an empty caption",
        f"clip 'c': audio {tmp_path / 'gone.wav'} not found",
    ]
    validate(clips[:1], "mine")
    validate([Clip("b", None, ("x",))], "mine", require_audio=False)


@pytest.mark.slow
def test_real_caption_files() -> None:
    if not CAPTIONS.is_dir():
        pytest.skip(f"dev data not present at {CAPTIONS}")
    t0 = time.process_time()  # CPU time: other processes on a shared machine do not count
    train = read_captions(CAPTIONS / "audiocaps_train.csv")
    elapsed = time.process_time() - t0
    assert len(train) == 49838 and all(len(c.captions) == 1 for c in train)
    val = read_captions(CAPTIONS / "audiocaps_val.csv")
    assert len(val) == 495 and all(len(c.captions) == 5 for c in val)
    dev = read_captions(CAPTIONS / "clotho_development.csv")
    assert len(dev) == 3839 and all(len(c.captions) == 5 for c in dev)
    assert len(read_captions(CAPTIONS / "clotho_validation.csv")) == 1045
    # ~0.2 s of CPU on a laptop core; generous bound for a slow CI core.
    assert elapsed < 3.0


def test_download_tool_layouts(tmp_path: Path) -> None:
    # aac-datasets AudioCaps: AUDIOCAPS/train.csv + AUDIOCAPS/audio_32000Hz/train/<yt>_<start>.flac
    ac = tmp_path / "AUDIOCAPS"
    _csv(ac / "train.csv", AC_HEADER, [["7", "r1nicOVtvkQ", "130", "Water pours"]])
    _touch(ac / "audio_32000Hz" / "train" / "r1nicOVtvkQ_130.flac")
    assert (
        load_split(ac, "train")[0].path == ac / "audio_32000Hz" / "train" / "r1nicOVtvkQ_130.flac"
    )
    # Clotho v2.1 archives: clotho_csv_files/ (captions + metadata) and clotho_audio_files/<split>/
    cl = tmp_path / "CLOTHO_v2.1"
    header = ["file_name"] + [f"caption_{i}" for i in range(1, 6)]
    _csv(cl / "clotho_csv_files" / "clotho_captions_validation.csv", header, [["a.wav", *"abcde"]])
    _csv(
        cl / "clotho_csv_files" / "clotho_metadata_validation.csv",
        ["file_name", "keywords"],
        [["a.wav", "k"]],
    )
    _touch(cl / "clotho_audio_files" / "validation" / "a.wav")
    [clip] = load_split(cl, "val")
    assert (
        clip.path == cl / "clotho_audio_files" / "validation" / "a.wav"
        and clip.captions == tuple("abcde")
    )


def test_pattern_naming_an_unknown_column_is_reported(audiocaps: Path) -> None:
    with pytest.raises(DatasetError, match="pattern '{ytid}' does not fit the columns"):
        load_split(audiocaps, "train", pattern="{ytid}")
