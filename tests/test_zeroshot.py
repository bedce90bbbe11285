"""zeroshot: caption/audio vectors in a shared space, and caption dedupe."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from audiocap_cli.config import check_config, load_config, save_config
from audiocap_cli.errors import ConfigMismatchError
from audiocap_cli.retrieval import zeroshot as zs

C = zs.NUM_CLASSES
E = 384


@pytest.fixture()
def fake_classes(monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """Class-name vectors without the text model: random unit rows [C, E]."""
    rng = np.random.default_rng(0)
    k = rng.normal(size=(C, E)).astype(np.float32)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    monkeypatch.setattr(zs, "class_name_vectors", lambda cfg: k)
    return k


def test_dedupe_captions() -> None:
    texts, counts, inv = zs.dedupe_captions(
        ["A dog barks.", "a dog  barks", " Rain falls ", "a dog barks!"]
    )
    assert texts == ["A dog barks.", "Rain falls"]
    assert counts.tolist() == [3, 1] and inv.tolist() == [0, 0, 1, 0]
    t, c, i = zs.dedupe_captions([])
    assert t == [] and c.size == 0 and i.size == 0


def test_class_names_and_mask() -> None:
    names = zs.class_names()
    assert len(names) == C and names[0] == "Speech" and names[-1] == "Field recording"
    assert set(zs.GENERIC_CLASSES) <= set(names)  # every generic name is a real class
    mask = zs.class_mask(zs.ZeroShotConfig())
    assert mask.sum() == C - len(zs.GENERIC_CLASSES)
    assert zs.class_mask(zs.ZeroShotConfig(drop_generic=False)).all()
    assert zs._synonyms("Bee, wasp, etc.") == ["Bee", "wasp"]


@pytest.mark.parametrize("variant,dim", [("profile", C), ("sentence", E), ("hybrid", C + E)])
def test_vectors_shapes_norms_and_matching(
    variant: str, dim: int, fake_classes: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zs, "_text_dim", lambda model: E)
    cfg = zs.ZeroShotConfig(variant=variant, top_k=3)
    assert cfg.dim == dim
    mask = zs.class_mask(cfg)
    kept = np.flatnonzero(mask)[[10, 200, 400]]
    # a caption that *is* a class name, and a clip that scores only that class
    caps = zs.caption_vectors_from_embeddings(fake_classes[kept], cfg)  # [3, dim]
    scores = np.full((3, 7, C), 0.01, np.float32)  # [N, T, C] frames
    scores[np.arange(3), :, kept] = 0.9
    aud = zs.audio_vectors(scores, cfg)
    assert caps.shape == aud.shape == (3, dim) and aud.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(caps, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(aud, axis=1), 1.0, atol=1e-5)
    assert ((aud @ caps.T).argmax(axis=1) == np.arange(3)).all()
    # [N, C] clip scores equal the mean over frames
    np.testing.assert_allclose(zs.audio_vectors(scores.mean(1), cfg), aud, atol=1e-6)


def test_generic_classes_are_ignored(
    fake_classes: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zs, "_text_dim", lambda model: E)
    cfg = zs.ZeroShotConfig(variant="sentence", top_k=1)
    names = zs.class_names()
    dog, room = names.index("Bark"), names.index("Inside, small room")
    s = np.zeros((1, C), np.float32)
    s[0, dog], s[0, room] = 0.3, 0.9  # the room tag is stronger but says nothing
    np.testing.assert_allclose(zs.audio_vectors(s, cfg)[0], fake_classes[dog], atol=1e-6)
    prof = zs.caption_profiles(fake_classes[[room]], zs.ZeroShotConfig())
    assert prof[0, room] == 0.0 and abs(prof.sum() - 1) < 1e-5


def test_hybrid_inner_product_is_weighted_cosines(
    fake_classes: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zs, "_text_dim", lambda model: E)
    rng = np.random.default_rng(1)
    sent = rng.normal(size=(4, E)).astype(np.float32)
    sent /= np.linalg.norm(sent, axis=1, keepdims=True)
    scores = rng.uniform(size=(2, C)).astype(np.float32)
    h = zs.ZeroShotConfig(variant="hybrid", alpha=0.3)
    p, s = replace(h, variant="profile"), replace(h, variant="sentence")
    got = zs.audio_vectors(scores, h) @ zs.caption_vectors_from_embeddings(sent, h).T
    want = (
        0.3 * zs.audio_vectors(scores, p) @ zs.caption_vectors_from_embeddings(sent, p).T
        + 0.7 * zs.audio_vectors(scores, s) @ zs.caption_vectors_from_embeddings(sent, s).T
    )
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_config_validation_and_round_trip(tmp_path: Path) -> None:
    with pytest.raises(ConfigMismatchError, match="variant"):
        zs.ZeroShotConfig(variant="nope")
    with pytest.raises(ConfigMismatchError, match="temperature"):
        zs.ZeroShotConfig(temperature=0)
    with pytest.raises(ConfigMismatchError):
        zs.pool_scores(np.zeros((2, 10), np.float32), zs.ZeroShotConfig())
    cfg = zs.ZeroShotConfig(variant="profile", top_k=3)
    save_config(cfg, tmp_path / "zs.json")
    back = load_config(zs.ZeroShotConfig, tmp_path / "zs.json")
    check_config(cfg, back, "zero-shot index")
    with pytest.raises(ConfigMismatchError, match="temperature"):
        check_config(cfg, replace(back, temperature=0.2), "zero-shot index")


@pytest.mark.slow
def test_shipped_text_side_puts_captions_near_their_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIOCAP_CACHE", str(tmp_path))
    cfg = zs.ZeroShotConfig()
    names = zs.class_names()
    k = zs.class_name_vectors(cfg)
    assert k.shape == (C, E)
    prof = zs.caption_profiles(
        zs._encoder("minilm").encode(["A dog barks repeatedly", "Rain falls on a tin roof"]), cfg
    )
    top = [{names[i] for i in np.argsort(-p)[:5]} for p in prof]
    assert top[0] & {"Bark", "Dog", "Bow-wow", "Canidae, dogs, wolves", "Yip"}
    assert top[1] & {"Rain", "Rain on surface", "Raindrop"}
    # a clip scoring "Bark" retrieves the dog caption from a tiny corpus
    corpus = [
        "A dog barks repeatedly",
        "Rain falls on a tin roof",
        "A man speaks",
        "An engine idles",
    ]
    texts, counts, caps = zs.corpus_vectors(corpus + ["a dog barks repeatedly."], cfg)
    assert texts == corpus and counts.tolist() == [2, 1, 1, 1] and caps.shape == (4, E)
    s = np.zeros((1, C), np.float32)
    s[0, names.index("Bark")], s[0, names.index("Dog")] = 0.8, 0.6
    assert (zs.audio_vectors(s, cfg) @ caps.T).argmax() == 0
    assert zs.embedder_id(cfg).startswith("zeroshot-sentence-")
    assert zs.resolve_config(cfg).text_fingerprint == zs._encoder("minilm").fingerprint
