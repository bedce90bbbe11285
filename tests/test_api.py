"""The Python API: ``audiocap_cli.load`` resolves a model as ``caption -m`` does, and
``Captioner.caption`` yields the records ``audiocap caption`` prints."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _shared import CLASSES, long_wav, make_workspace

import audiocap_cli
from audiocap_cli.pipeline.captioner import caption_files
from audiocap_cli.pipeline.records import RecordWriter


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny retrieval-only model (mean-pooled YAMNet frames, the 1NN baseline: no training)
    of the synthetic workspace, and that workspace."""
    from audiocap_cli.audio.features import FeatureCache
    from audiocap_cli.pipeline.modeldir import ModelConfig
    from audiocap_cli.training import workflows

    ws = make_workspace(tmp_path_factory.mktemp("api"))
    m = ws / "model"
    cache = FeatureCache(ws / "cache")
    workflows.build_index(ws, m, ModelConfig(), kind="mean", cache=cache)
    return m, ws


@pytest.fixture()
def cached(model: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The model, with the feature cache its index was built with."""
    monkeypatch.setenv("AUDIOCAP_CACHE", str(model[1] / "cache"))
    return model


def _no_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_caption_yields_the_records_caption_prints(cached: tuple[Path, Path]) -> None:
    m, ws = cached
    bad = ws / "notaudio.wav"
    bad.write_text("hello")
    paths = sorted(str(p) for p in (ws / "audio").glob("test_*.wav")) + [str(bad)]
    cap = audiocap_cli.load(m, batch_size=4)  # batches of 4: the records come in input order
    got = list(cap.caption(paths))
    out = io.StringIO()
    with RecordWriter(None, stdout=out) as writer:
        caption_files(audiocap_cli.load(m), paths, writer)
    printed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert _no_seconds(got) == _no_seconds(printed)
    assert [r["path"] for r in got] == paths  # one record per file: every clip is one window
    assert "error" in got[-1] and "error" not in got[0]
    names = {c for caps in CLASSES.values() for c in caps}
    assert all(r["caption"] in names and r["retrieved"] for r in got[:-1])
    # a single path is one file, not its characters; a generator is read lazily
    assert _no_seconds(list(cap.caption(paths[0]))) == _no_seconds(got[:1])
    assert _no_seconds(list(cap.caption(p for p in paths[:2]))) == _no_seconds(got[:2])
    assert list(cap.caption([])) == []


def test_load_resolves_the_model_and_routes_options(
    cached: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from audiocap_cli.errors import ModelNotFoundError

    m, _ = cached
    monkeypatch.setenv("AUDIOCAP_MODEL", str(m))
    cap = audiocap_cli.load(beam_size=2, k=3, batch_size=5)  # $AUDIOCAP_MODEL, as the CLI
    assert cap.md.path == m and cap.k == 3 and cap.opts.batch_size == 5
    assert cap.opts.decoding.beam_size == 2 and cap.opts.decoding.batch_size == 32
    assert cap.retrieval.name == "1NN-yamnet (index)" and not cap.retrieval.pool_caption
    with pytest.raises(TypeError, match="bogus"):
        audiocap_cli.load(m, bogus=1)
    with pytest.raises(ModelNotFoundError):
        audiocap_cli.load(m.parent / "no" / "such")


def test_every_model_retrieval_has_its_kind() -> None:
    from audiocap_cli.pipeline.modeldir import RETRIEVALS
    from audiocap_cli.retrieval.kinds import KINDS

    assert set(KINDS) == set(RETRIEVALS)


def test_import_stays_light() -> None:
    code = (
        "import sys, audiocap_cli; print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


@pytest.mark.slow
def test_shipped_default_captions_a_wav(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_with_smollm2: Path
) -> None:
    """The shipped default model through the API (its index is built into $AUDIOCAP_CACHE on
    first use; the cache is empty but for the converted SmolLM2)."""
    monkeypatch.delenv("AUDIOCAP_MODEL", raising=False)
    monkeypatch.setenv("AUDIOCAP_CACHE", str(cache_with_smollm2))
    wav = tmp_path / "tone.wav"
    long_wav(wav, 3.0)
    cap = audiocap_cli.load()
    (rec,) = list(cap.caption([wav]))
    assert rec["path"] == str(wav) and rec["start"] == 0.0 and rec["end"] == pytest.approx(3.0)
    assert isinstance(rec["caption"], str) and rec["caption"]
    assert len(rec["guidance"]) == cap.k and cap.retrieval.pool_caption
