"""CaptionIndex: build, query, exclude-self, incremental add, disk round trip, config checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from audiocap_cli.errors import ConfigMismatchError, DatasetError, ModelNotFoundError
from audiocap_cli.retrieval.index import CaptionIndex, Hit, IndexConfig, guidance

DIM = 16


def _unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _cfg(**kw: object) -> IndexConfig:
    return IndexConfig(dim=DIM, embedder="retriever:abc", encoder="yamnet:123", **kw)  # type: ignore[arg-type]


def _entries(n: int, start: int = 0) -> tuple[list[str], list[tuple[str, ...]]]:
    ids = [f"clip{i}" for i in range(start, start + n)]
    return ids, [(f"caption of {i}", f"second caption of {i}") for i in ids]


def _exact(index_vecs: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    d = ((q[:, None, :] - index_vecs[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1)[:, :k]


def test_query_matches_exact_search_with_squared_l2() -> None:
    vecs = _unit(300, 0)
    ids, caps = _entries(300)
    index = CaptionIndex.build(vecs, ids, caps, _cfg())
    q = _unit(20, 1)
    hits = index.query(q, k=5)
    exact = _exact(vecs, q, 5)
    assert [[h.id for h in row] for row in hits] == [[ids[j] for j in row] for row in exact]
    d0 = float(((q[0] - vecs[exact[0, 0]]) ** 2).sum())
    assert hits[0][0].distance == pytest.approx(d0, rel=1e-4, abs=1e-5)
    assert hits[0][0].captions == caps[exact[0, 0]]
    assert all(a.distance <= b.distance for row in hits for a, b in zip(row, row[1:]))


def test_exclude_self_drops_only_own_entry() -> None:
    vecs = _unit(100, 2)
    ids, caps = _entries(100)
    index = CaptionIndex.build(vecs, ids, caps, _cfg())
    hits = index.query(vecs[:10], k=5, exclude_ids=ids[:10])
    expected = _exact(vecs, vecs[:10], 6)[:, 1:]  # nearest is the clip itself
    for row, exp, own in zip(hits, expected, ids[:10]):
        assert len(row) == 5 and own not in [h.id for h in row]
        assert [h.id for h in row] == [ids[j] for j in exp]
    # Without exclusion the clip finds itself at distance 0.
    plain = index.query(vecs[:1], k=5)[0]
    assert plain[0].id == ids[0] and plain[0].distance == pytest.approx(0.0, abs=1e-5)
    # None, or an id not in the index, excludes nothing.
    mixed = index.query(vecs[:2], k=3, exclude_ids=[None, "not-indexed"])
    assert [r[0].id for r in mixed] == ids[:2]


def test_identical_captions_of_other_clips_are_not_excluded() -> None:
    vecs = _unit(3, 3)
    vecs[1] = vecs[0]
    index = CaptionIndex.build(
        vecs, ["a", "b", "c"], [("dog barks",), ("dog barks",), ("rain",)], _cfg()
    )
    row = index.query(vecs[:1], k=2, exclude_ids=["a"])[0]
    assert row[0].id == "b" and row[0].captions == ("dog barks",)


def test_small_index_returns_fewer_hits_and_empty_index_none() -> None:
    vecs = _unit(3, 4)
    index = CaptionIndex.build(vecs, ["a", "b", "c"], ["x", "y", "z"], _cfg())
    assert sorted(h.id for h in index.query(vecs[:1], k=10, exclude_ids=["a"])[0]) == ["b", "c"]
    empty = CaptionIndex.build(np.zeros((0, DIM), np.float32), [], [], _cfg())
    assert empty.query(vecs[:2], k=5) == [[], []]


def test_round_trip_through_disk(tmp_path: Path) -> None:
    vecs = _unit(200, 5)
    ids, caps = _entries(200)
    index = CaptionIndex.build(vecs, ids, caps, _cfg())
    out = index.save(tmp_path / "idx")
    assert sorted(p.name for p in out.iterdir()) == ["entries.jsonl", "index.bin", "index.json"]
    loaded = CaptionIndex.load(out, expected=_cfg())
    assert loaded.ids == ids and loaded.captions_of("clip7") == caps[7] and len(loaded) == 200
    q = _unit(8, 6)
    assert loaded.query(q, k=5) == index.query(q, k=5)
    # Saving over an existing index replaces it whole, leaving no temp dirs behind.
    CaptionIndex.build(vecs[:10], ids[:10], caps[:10], _cfg()).save(out)
    assert len(CaptionIndex.load(out)) == 10
    # idx is a symlink to its one current version: no temp dirs or old versions left behind.
    assert out.is_symlink() and [
        p.name for p in tmp_path.iterdir() if not p.name.startswith(".")
    ] == ["idx"]
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == [out.resolve()]


def test_replacing_an_index_never_leaves_it_missing(tmp_path: Path) -> None:
    import threading

    vecs = _unit(40, 8)
    ids, caps = _entries(40)
    out = tmp_path / "idx"
    out.mkdir()  # a real directory, as an older audiocap wrote it, is migrated on the first save
    CaptionIndex.build(vecs[:5], ids[:5], caps[:5], _cfg()).save(out)
    assert out.is_symlink() and len(CaptionIndex.load(out)) == 5
    done = threading.Event()

    def writer() -> None:
        try:
            for n in range(6, 40):
                CaptionIndex.build(vecs[:n], ids[:n], caps[:n], _cfg()).save(out)
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    seen, loads = set(), 0
    while not done.is_set():
        assert (out / "index.json").is_file() and (out / "entries.jsonl").is_file()
        seen.add(len(CaptionIndex.load(out)))  # always a whole index: entries match the graph
        loads += 1
    t.join()
    assert loads > 0 and len(CaptionIndex.load(out)) == 39
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".")]) == 1


def test_config_mismatch_and_missing_dir(tmp_path: Path) -> None:
    vecs = _unit(20, 7)
    ids, caps = _entries(20)
    out = CaptionIndex.build(vecs, ids, caps, _cfg()).save(tmp_path / "idx")
    other = IndexConfig(dim=DIM, embedder="mean:zzz", encoder="yamnet:123")
    with pytest.raises(ConfigMismatchError, match="embedder"):
        CaptionIndex.load(out, expected=other)
    with pytest.raises(ConfigMismatchError, match="dim"):
        CaptionIndex.load(
            out, expected=IndexConfig(dim=8, embedder="retriever:abc", encoder="yamnet:123")
        )
    # Search-only knobs may differ; the one in use wins.
    assert CaptionIndex.load(out, expected=_cfg(ef_search=128, M=8)).config.ef_search == 128
    with pytest.raises(ModelNotFoundError):
        CaptionIndex.load(tmp_path / "nothing")
    (out / "index.bin").write_bytes(b"garbage")
    with pytest.raises(ModelNotFoundError):
        CaptionIndex.load(out)


def test_query_vectors_of_wrong_dim_refused() -> None:
    index = CaptionIndex.build(_unit(5, 8), *_entries(5), _cfg())
    with pytest.raises(ConfigMismatchError, match="16-dim"):
        index.query(np.zeros((1, 8), np.float32))


def test_incremental_add_grows_and_matches_full_build() -> None:
    vecs = _unit(150, 9)
    ids, caps = _entries(150)
    index = CaptionIndex.build(vecs[:50], ids[:50], caps[:50], _cfg())
    index.add(vecs[50:], ids[50:], caps[50:])  # 100 more than the 50 allocated
    assert len(index) == 150
    full = CaptionIndex.build(vecs, ids, caps, _cfg())
    q = _unit(10, 10)
    assert [[h.id for h in r] for r in index.query(q, k=5)] == [
        [h.id for h in r] for r in full.query(q, k=5)
    ]


def test_add_duplicate_id_refused_or_replaced() -> None:
    vecs = _unit(10, 11)
    ids, caps = _entries(10)
    index = CaptionIndex.build(vecs, ids, caps, _cfg())
    new = _unit(1, 12)
    with pytest.raises(DatasetError, match="already indexed"):
        index.add(new, ["clip3"], [("new caption",)])
    index.add(new, ["clip3"], [("new caption",)], replace=True)
    assert len(index) == 10 and index.captions_of("clip3") == ("new caption",)
    hit = index.query(new, k=1)[0][0]
    assert hit.id == "clip3" and hit.distance == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(DatasetError, match="duplicate"):
        CaptionIndex.build(vecs[:2], ["x", "x"], ["a", "b"], _cfg())


def test_guidance_takes_first_caption_of_k_nearest() -> None:
    hits = [Hit(f"c{i}", (f"first {i}", f"second {i}"), float(i)) for i in range(7)]
    assert guidance(hits, 5) == [f"first {i}" for i in range(5)]
    assert guidance(hits, 2, per_clip=2) == ["first 0", "second 0", "first 1", "second 1"]
    assert guidance(hits[:3], 5) == ["first 0", "first 1", "first 2"]


def test_rebuild_gives_the_same_graph(tmp_path: Path) -> None:
    # threaded insertion makes the graph (and approximate neighbours) depend on thread timing;
    # the default single-threaded build is byte-for-byte repeatable
    vecs = _unit(3000, 11)
    ids, caps = _entries(3000)
    a = CaptionIndex.build(vecs, ids, caps, _cfg(M=4, ef_construction=8)).save(tmp_path / "a")
    b = CaptionIndex.build(vecs, ids, caps, _cfg(M=4, ef_construction=8)).save(tmp_path / "b")
    assert (a / "index.bin").read_bytes() == (b / "index.bin").read_bytes()


def test_ngram_idf_covers_every_caption_and_follows_adds() -> None:
    from audiocap_cli.text.agreement import ngram_idf

    ids, caps = _entries(6)
    index = CaptionIndex.build(_unit(6, 13), ids, caps, _cfg())
    idf = index.ngram_idf()
    assert (
        idf == ngram_idf([c for row in caps for c in row]) and index.ngram_idf() is idf
    )  # computed once
    index.add(_unit(1, 14), ["clip9"], [("a dog barks",)])
    assert "1\x00dog" in index.ngram_idf() and "1\x00dog" not in idf


def test_captioner_selects_with_the_index_idf(monkeypatch: pytest.MonkeyPatch) -> None:
    """`caption`'s consensus selection decodes with CIDEr-D agreement and the idf of the model's
    index (what the measured default used); "score" selection needs no idf. The pool's own
    caption (pool_margin) is for retrievals whose pool_caption holds (label space) only."""
    from types import SimpleNamespace

    from audiocap_cli.generation import decoding
    from audiocap_cli.generation.decoding import DecodingOptions
    from audiocap_cli.pipeline import captioner
    from audiocap_cli.pipeline.captioner import Captioner, CaptionOptions

    ids, caps = _entries(4)
    cap = Captioner.__new__(Captioner)  # the parts generate() reads, without loading a model
    cap.index = CaptionIndex.build(_unit(4, 15), ids, caps, _cfg())
    cap.decoder = object()  # type: ignore[assignment]
    cap.captions = captioner.DecoderCaptions()
    cap.retrieval = SimpleNamespace(pool_caption=False)  # the paper's kind: no pool of its own
    monkeypatch.setattr(cap, "decoder_audio", lambda frames, scores: None)
    seen: dict = {}

    def fake_decode(decoder, guid, audio, opts, evidence=None, idf=None):  # type: ignore[no-untyped-def]
        seen.update(opts=opts, idf=idf)
        return [decoding.Decoded("x", 0.0, 0.0, ()) for _ in guid]

    monkeypatch.setattr(captioner, "decode", fake_decode)
    cap.opts = CaptionOptions()
    assert cap.generate([["caption of clip0"]], np.zeros((1, 1, 1), np.float32), None) == ["x"]
    assert seen["idf"] is cap.index.ngram_idf()
    assert (seen["opts"].select, seen["opts"].recall_weight) == ("consensus", 3.0)
    assert seen["opts"].pool_margin == math.inf  # the pool's own caption: label-space pools only
    cap.retrieval = SimpleNamespace(pool_caption=True)
    cap.generate([["caption of clip0"]], np.zeros((1, 1, 1), np.float32), None)
    assert seen["opts"].pool_margin == CaptionOptions().decoding.pool_margin == 0.1
    cap.retrieval = SimpleNamespace(pool_caption=False)
    cap.decoder = None  # a retrieval-only model prints its first guidance caption, retrieved
    cap.captions = captioner.ConsensusCaptions()
    got = cap.decode_windows(
        [["caption of clip0", "caption of clip1"], []], np.zeros((2, 1, 1), np.float32), None
    )
    assert [(d.text, d.retrieved) for d in got] == [("caption of clip0", True), ("", False)]
    cap.decoder = object()  # type: ignore[assignment]
    cap.captions = captioner.DecoderCaptions()
    cap.opts = CaptionOptions(DecodingOptions(select="score"))
    cap.generate([["caption of clip0"]], np.zeros((1, 1, 1), np.float32), None)
    assert seen["idf"] is None
