"""What a caption record says beside its caption: `--fast` (the consensus caption, no decoder
loaded), the tagger's `tags`, the `confidence` figure, and no per-record `seconds`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from _shared import make_workspace

import audiocap_cli
from audiocap_cli.audio.features import ClipFeatures
from audiocap_cli.pipeline.captioner import (
    TAG_FLOOR,
    Captioner,
    CaptionOptions,
    ConsensusCaptions,
)
from audiocap_cli.pipeline.confidence import confidence


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A retrieval-only model of the synthetic workspace (mean-pooled YAMNet frames: nothing to
    train) whose decoder/ folder is damaged: a model that loads its decoder cannot start."""
    from audiocap_cli.audio.features import FeatureCache
    from audiocap_cli.pipeline.modeldir import DECODER_CONFIG, ModelConfig
    from audiocap_cli.training import workflows

    ws = make_workspace(tmp_path_factory.mktemp("fields"))
    m = ws / "model"
    workflows.build_index(ws, m, ModelConfig(), kind="mean", cache=FeatureCache(ws / "cache"))
    (m / "decoder").mkdir()
    (m / "decoder" / DECODER_CONFIG).write_text("{not json")
    return m, ws


@pytest.fixture()
def cached(model: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    m, ws = model
    monkeypatch.setenv("AUDIOCAP_CACHE", str(ws / "cache"))
    return m, sorted(str(p) for p in (ws / "audio").glob("test_*.wav"))


def test_fast_prints_the_consensus_caption_without_loading_the_decoder(
    cached: tuple[Path, list[str]],
) -> None:
    m, paths = cached
    with pytest.raises(Exception):  # noqa: B017 - the damaged decoder: it is loaded without fast
        Captioner(m)
    cap = audiocap_cli.load(m, fast=True)
    assert cap.decoder is None and isinstance(cap.captions, ConsensusCaptions)
    recs = list(cap.caption(paths))
    assert [r["path"] for r in recs] == paths
    for r in recs:
        assert r["caption"] == r["guidance"][0]["caption"] and r["retrieved"] is True


def test_records_carry_tags_and_confidence_and_no_seconds(cached: tuple[Path, list[str]]) -> None:
    m, paths = cached
    cap = Captioner(m, CaptionOptions(fast=True, tags=3))
    names = set(cap.class_names)
    assert len(names) == 521  # YAMNet's classifier
    recs = list(cap.caption(paths))
    for r in recs:
        assert list(r) == [
            "path",
            "start",
            "end",
            "caption",
            "confidence",
            "tags",
            "guidance",
            "retrieved",
        ]
        assert 0.0 <= r["confidence"] <= 1.0 and r["confidence"] == round(r["confidence"], 3)
        tags = r["tags"]
        assert 1 <= len(tags) <= 3 and all(name in names for name, _ in tags)
        scores = [s for _, s in tags]
        assert scores == sorted(scores, reverse=True) and all(
            TAG_FLOOR <= s <= 1 and s == round(s, 3) for s in scores
        )
    assert set(cap.stage_seconds) == {"features", "retrieval", "captions"}
    assert all(v >= 0 for v in cap.stage_seconds.values()) and cap.stage_seconds["retrieval"] > 0
    no_tags = list(Captioner(m, CaptionOptions(fast=True, tags=0)).caption(paths[:1]))
    assert "tags" not in no_tags[0] and no_tags[0]["caption"] == recs[0]["caption"]


def test_tags_of_a_window() -> None:
    """Top N by score, best first, rounded to 3 decimals, none under the floor; a kind that reads
    frames has them max-pooled over the audible frames only; no classifier, no tags."""
    cap = Captioner.__new__(Captioner)
    cap.class_names = ["Dog", "Bark", "Cat", "Silence"]
    cap.opts = CaptionOptions(tags=3)
    cap.encoder = SimpleNamespace(num_frames=lambda seconds: int(seconds))  # 1 frame a second
    cap.retrieval = SimpleNamespace(window_scores=lambda s, audible: s)  # as cached: [T, C]
    scores = np.array(
        [[[0.91234, 0.3, 0.004, 0.0], [0.5, 0.70071, 0.002, 0.1], [0.0, 0.0, 0.0, 1.0]]],
        np.float32,
    )  # 3 frames, the last one zero padding ("Silence")
    f = ClipFeatures(np.zeros((1, 3, 2), np.float32), scores, (0.0,), (2.0,), 2.0)
    assert cap.tags_of(f, 0) == [("Dog", 0.912), ("Bark", 0.701), ("Silence", 0.1)]
    cap.opts = CaptionOptions(tags=10)  # Cat's 0.004 is under the floor
    assert [n for n, _ in cap.tags_of(f, 0)] == ["Dog", "Bark", "Silence"]
    cap.retrieval = SimpleNamespace(window_scores=lambda s, audible: s[:audible].max(0)[None])
    assert cap.tags_of(f, 0)[0] == ("Dog", 0.912)  # a pooled [1, C] is read as it is
    cap.opts = CaptionOptions(tags=0)
    assert cap.tags_of(f, 0) is None
    cap.opts = CaptionOptions()
    no_scores = ClipFeatures(f.frames, None, (0.0,), (2.0,), 2.0)  # an encoder without classifier
    assert cap.tags_of(no_scores, 0) is None
    cap.class_names = []
    assert cap.tags_of(f, 0) is None


def test_confidence() -> None:
    pool = ["a dog barks", "a dog is barking", "a dog barks loudly", "rain falls"]
    w = [1.0] * len(pool)
    same = ["a dog barks loudly"] * 3
    got = confidence(
        ["a dog barks", "a dog barks loudly", "an engine idles", "", "a dog barks", "a dog barks"],
        [(pool, w), (same, [1.0] * 3), (pool, w), (pool, w), ([], []), (same, [1.0] * 3)],
        None,
    )
    assert all(0.0 <= c <= 1.0 for c in got)
    assert got[0] > 0.2  # said by most of the pool
    assert got[1] == 1.0  # every other pool caption says exactly it
    assert got[2] == 0.0 and got[3] == 0.0 and got[4] == 0.0  # no shared word; nothing; no pool
    assert 0.0 < got[5] < got[1]  # the mean over 1- to 4-grams: no 4-gram of its own to share
    # a caption copied from the pool is not credited with matching itself
    assert confidence(["rain falls"], [(pool, w)], None) == [0.0]
    # the weights weigh the pool
    heavy = confidence(["a dog barks"], [(pool, [0.1, 0.1, 0.1, 10.0])], None)
    assert heavy[0] < got[0]


@pytest.mark.slow
def test_cli_fast_tags_and_run_times(cached: tuple[Path, list[str]]) -> None:
    m, paths = cached
    r = subprocess.run(
        [sys.executable, "-m", "audiocap_cli", "caption", *paths, "-m", str(m), "--fast"]
        + ["--tags", "0"],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["path"] for row in rows] == paths
    assert all("tags" not in row and "seconds" not in row and row["retrieved"] for row in rows)
    assert f"audiocap: {len(paths)} files in " in r.stderr and "retrieval" in r.stderr
