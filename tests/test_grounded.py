"""Label-grounded captioning: AudioSet labels, label-space retrieval, the low-rank decoder head,
the persistent LM feature store and shipped-model resolution (all offline, tiny fixtures)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _shared import D_A

from audiocap_cli.errors import ModelNotFoundError
from audiocap_cli.generation.decoder import DecoderConfig, GuidedDecoder, load_decoder
from audiocap_cli.generation.decoding import DecodingOptions, decode
from audiocap_cli.generation.lm import FrozenLM
from audiocap_cli.generation.lmfeatures import LMFeatureStore
from audiocap_cli.retrieval import labelspace as ls
from audiocap_cli.training import audioset, grounded
from audiocap_cli.training.decoder import DecoderTrainConfig, train_decoder

# Three real YAMNet mids (class index in yamnet_class_map.csv): Speech 0, Dog 69, Rain 289;
# /m/05zppz (Male speech) is one of the AudioSet classes YAMNet lacks.
SPEECH, DOG, RAIN, MALE = "/m/09x0r", "/m/0bt9lr", "/m/06mb1", "/m/05zppz"
SEGMENTS = f"""# Segments csv created Sun Mar  5 10:56:58 2017
# num_ytids=4, num_segs=4, num_unique_labels=4, num_positive_labels=6
# YTID, start_seconds, end_seconds, positive_labels
aaa, 30.000, 40.000, "{SPEECH},{DOG}"
b_b, 0.000, 10.000, "{RAIN}"
ccc, 10.000, 20.000, "{MALE}"
ddd, 5.000, 15.000, "{DOG},{MALE}"
"""

# A slice of AudioSet's ontology: Animal > Domestic animals, pets > Dog > Bark, and Dog's
# sibling Cat; "/m/0xxx" is a node YAMNet lacks between Animal and Domestic animals.
ANIMAL, PETS, CAT, BARK, GAP = "/m/0jbk", "/m/068hy", "/m/01yrx", "/m/05tny_", "/m/0xxx"
ONTOLOGY = [
    {"id": ANIMAL, "child_ids": [GAP]},
    {"id": GAP, "child_ids": [PETS]},
    {"id": PETS, "child_ids": [DOG, CAT]},
    {"id": DOG, "child_ids": [BARK]},
    {"id": CAT, "child_ids": []},
    {"id": BARK, "child_ids": []},
]


@pytest.fixture()
def segs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "audioset"
    folder.mkdir()
    (folder / "unbalanced_train_segments.csv").write_text(SEGMENTS)
    (folder / "ontology.json").write_text(json.dumps(ONTOLOGY))
    monkeypatch.setenv(audioset.LABELS_ENV, str(folder))
    return folder


@pytest.mark.parametrize("few", [True, False])
def test_labels_attach_by_segment_and_report_coverage(
    segs: Path, monkeypatch: pytest.MonkeyPatch, few: bool
) -> None:
    monkeypatch.setattr(audioset, "FEW_KEYS", 1000 if few else 0)  # byte search vs full parse
    ids = ["aaa_30", "b_b_0", "ccc_10", "ddd_5", "zzz_0", "aaa_31"]
    labels, cov = audioset.label_matrix(ids)
    mids = audioset.class_mids()
    assert labels.shape == (6, 521) and mids[0] == SPEECH
    assert (
        labels[0, [mids.index(SPEECH), mids.index(DOG)]].tolist() == [1, 1] and labels[0].sum() == 2
    )
    assert labels[1, mids.index(RAIN)] == 1  # a youtube id with "_" in it
    assert labels[2].sum() == 0 and labels[3].sum() == 1  # Male speech has no YAMNet class
    assert labels[4].sum() == 0 and labels[5].sum() == 0  # unknown clip, other start time
    assert (cov.clips, cov.labelled, cov.labels, cov.dropped, cov.dropped_mids) == (
        6,
        3,
        6,
        2,
        (MALE,),
    )
    assert "3 of 6 clips labelled" in cov.describe()


def test_generic_manifest_labels_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A generic manifest's own ``mids``/``labels`` column labels its clips, in any of its
    spellings (JSON list, AudioSet's comma-separated mids, display names split by ';'), with
    no segment CSVs installed."""
    monkeypatch.setenv(audioset.LABELS_ENV, "")
    monkeypatch.setattr(audioset.importlib.metadata, "files", lambda name: [])  # no wheel either
    rows = [
        {"path": "a.wav", "caption": "a dog barks", "mids": [DOG, SPEECH]},
        {"path": "b.wav", "caption": "rain falls", "mids": f"{RAIN},{MALE}"},
        {"path": "c.wav", "caption": "a dog and rain", "labels": "dog; RAIN"},
        {"path": "c.wav", "caption": "rain and a dog"},
        {"path": "d.wav", "caption": "no labels here"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lab = grounded.read_labelled(manifest)
    mids = audioset.class_mids()
    want = {"a.wav": {DOG, SPEECH}, "b.wav": {RAIN}, "c.wav": {DOG, RAIN}, "d.wav": set()}
    got = {
        cid: {mids[j] for j in np.flatnonzero(row)}
        for cid, row in zip(lab.clip_ids, lab.clip_labels)
    }
    assert got == want
    assert lab.labels.shape == (5, 521)  # one row per caption, its clip's labels
    cov = lab.coverage
    assert (cov.clips, cov.labelled, cov.labels, cov.dropped, cov.dropped_mids) == (
        4,
        3,
        6,
        1,
        (MALE,),
    )


def test_generic_manifest_bad_labels_cell_is_reported(tmp_path: Path) -> None:
    from audiocap_cli.datasets import read_captions
    from audiocap_cli.errors import DatasetError

    manifest = tmp_path / "m.csv"
    manifest.write_text('path,caption,mids\na.wav,a dog,"[not json"\n')
    with pytest.raises(DatasetError, match="line 2: mids is not a valid JSON list"):
        read_captions(manifest)


def test_missing_labels_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no AudioSet segment CSVs"):
        audioset.segments_dir(tmp_path)


def _corpus(cfg: ls.LabelSpaceConfig = ls.LabelSpaceConfig(num_classes=4)):
    labels = np.array(
        [[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]],
        np.float32,
    )
    caps = [
        "a dog barks",
        "a dog barks loudly",
        "dogs bark",
        "rain falls",
        "rain and thunder",
        "unlabelled",
    ]
    return labels, caps, ls.LabelCorpus.build(labels, caps, cfg)


def test_label_corpus_groups_sets_and_retrieves_by_cosine() -> None:
    labels, caps, corpus = _corpus()
    assert (
        len(corpus.captions) == 3
    )  # three distinct non-empty label sets; the unlabelled clip is left out
    assert sorted(len(c) for c in corpus.captions) == [1, 1, 3]
    cfg = ls.LabelSpaceConfig(num_classes=4, rerank_pool=10, per_set=2, set_power=2.0)
    q = ls.query_vectors(np.array([[0.9, 0.1, 0.0, 0.0]]), corpus.weights, cfg)
    ranked, cos = ls.nearest_sets(q, corpus.vectors, 3)
    ranked, cos = ranked[0], cos[0]
    assert set(corpus.captions[ranked[0]]) == set(caps[:3])
    assert np.allclose(cos, corpus.vectors[ranked] @ q[0]) and cos[0] > cos[1] >= cos[2]
    pool, w = ls.gather_pool(
        ((corpus.captions[u], corpus.caption_ids[u], c) for u, c in zip(ranked, cos)), cfg
    )
    assert len(pool) == 4 and set(pool[:2]) <= set(caps[:3])  # per_set caps the first set at 2
    assert np.allclose(w, [cos[0] ** 2] * 2 + [max(cos[1], 1e-6) ** 2] + [max(cos[2], 1e-6) ** 2])
    # leave-one-out: a clip never gets its own caption back
    guid = ls.corpus_guidance(corpus, labels[:5], cfg, 2, [{i} for i in range(5)])
    for i, g in enumerate(guid):
        assert caps[i] not in g and len(g) == 2


def test_hierarchy_closes_labels_through_missing_classes(segs: Path) -> None:
    mids = audioset.class_mids()
    h = grounded.hierarchy()
    assert h is not None
    a, p, d, c, b = (mids.index(m) for m in (ANIMAL, PETS, DOG, CAT, BARK))
    assert h.ancestors[b, [d, p, a]].all() and h.ancestors[d].sum() == 2  # through the gap node
    assert h.children[d, b] and not h.children[a, p] and h.siblings[d, c] and not h.siblings[d, d]
    labels = np.zeros((2, 521), np.float32)
    labels[0, b] = 1
    closed = h.close(labels)
    assert set(np.flatnonzero(closed[0])) == {a, p, d, b} and closed[1].sum() == 0


def test_simulated_scores_follow_the_ontology_and_add_intruders(segs: Path) -> None:
    from audiocap_cli.training import labelsim

    mids = audioset.class_mids()
    a, d, c, b = (mids.index(m) for m in (ANIMAL, DOG, CAT, BARK))
    labels = np.zeros((400, 521), np.float32)
    labels[:, d] = 1
    prior = np.zeros(521)
    prior[mids.index(RAIN)] = 1.0
    sim = labelsim.Simulation(prior_floor=0.0)
    s = labelsim.simulate(labels, np.random.default_rng(0), prior, grounded.hierarchy(), sim)
    assert s.shape == labels.shape and s.min() >= 0 and s.max() <= 1
    assert (
        0.7 < s[:, d].mean() < 0.9 and (s[:, a] >= 0.85 * s[:, d]).all()
    )  # ancestors lifted (>= 0.95/1.1)
    assert 0.3 < (s[:, b] > 0).mean() < 0.8 and 0.3 < (s[:, c] > 0).mean() < 0.7  # child, sibling
    intruders = (s > 0).sum(0)
    assert intruders[mids.index(RAIN)] > 350  # Poisson(5.5) draws from the prior
    bare = labelsim.simulate(labels, np.random.default_rng(0), prior, None, sim)
    assert (bare[:, a] == 0).all() and (bare[:, b] == 0).all()  # no ontology: nothing related fires


@pytest.mark.parametrize("corpus_idf", [False, True])
def test_label_retriever_round_trip_matches_exact_search(tmp_path: Path, corpus_idf: bool) -> None:
    cfg = ls.LabelSpaceConfig(num_classes=4, rerank_pool=4, per_set=3, corpus_idf=corpus_idf)
    labels, caps, corpus = _corpus(cfg)
    index = ls.build_index(corpus, cfg, "enc")
    index.save(tmp_path / "index", extra=lambda f: ls.save_extras(f, cfg, corpus.weights))
    from audiocap_cli.retrieval.index import CaptionIndex

    r = ls.LabelRetriever(CaptionIndex.load(tmp_path / "index"), tmp_path / "index")
    assert r.embedder == index.config.embedder
    scores = np.array(
        [[[0.8, 0.0, 0.1, 0.0], [0.2, 0.3, 0.0, 0.0]], [[0.0, 0.6, 0.5, 0.0]] * 2], np.float32
    )
    vec = r.vectors(scores)
    hits = r.index.query(vec, k=r.sets_per_query)
    assert r.guidance(hits, 2) == ls.corpus_guidance(
        corpus, scores.max(axis=1), cfg, 2, idf=r.idf()
    )
    assert r.idf() == (index.ngram_idf() if corpus_idf else None)


def test_rerank_is_the_consensus_and_older_configs_load(tmp_path: Path) -> None:
    """Guidance is the pool's TF-IDF consensus; a labelspace.json written by an older audiocap,
    with re-ranking fields since removed, reads as the default, and the index's embedder id
    hashes the same fields as before (so every index built before stays valid)."""
    import hashlib

    from audiocap_cli.config import load_config, save_config, to_dict
    from audiocap_cli.text.agreement import consensus_rerank

    pool = ["a dog barks", "a dog is barking", "a dog barks twice", "rain falls", "a dog barks"]
    w = [1.0, 1.0, 0.5, 1.0, 1.0]
    assert ls.rerank([(pool, w)], 3) == consensus_rerank([pool], top=3, weights=[w])
    cfg = ls.LabelSpaceConfig()
    path = tmp_path / ls.CONFIG_NAME
    save_config(cfg, path)
    payload = json.loads(path.read_text())
    payload["config"] |= {"rerank": "tfidf", "rerank_recall_weight": 0.0}  # as saved before
    path.write_text(json.dumps(payload))
    assert load_config(ls.LabelSpaceConfig, path) == cfg
    fields = to_dict(cfg)
    assert set(fields) == {
        "audio_encoder",
        "num_classes",
        "pool",
        "score_power",
        "idf_power",
        "rerank_pool",
        "per_set",
        "corpus_idf",
        "ancestors",
        "set_power",
    }  # the fields the embedder id of every index built so far hashes
    weights = np.ones(cfg.num_classes, np.float32)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert ls.embedder_id(cfg, weights).startswith(f"labels-{digest}-")


def test_lowrank_head_predicts_only_its_vocabulary(lm: FrozenLM, tmp_path: Path) -> None:
    vocab = grounded.vocabulary(lm, ["a dog barks", "rain falls"], 30)
    assert lm.eos_id in vocab
    torch.manual_seed(0)
    cfg = DecoderConfig(lm="tiny-gpt2", d_l=64, d_a=D_A, head="lowrank", head_rank=4)
    dec = GuidedDecoder(cfg, lm, vocab).eval()
    trained = {k for k, _ in dec.named_parameters()}
    assert {"head_a", "head_b", "head_bias"} <= trained and "head" not in trained
    assert (
        sum(p.numel() for n, p in dec.named_parameters() if n.startswith("head"))
        < 64 * 4 + len(vocab) * 5 + 1
    )
    hyp = lm.features(torch.tensor([[lm.bos_id, 32]]))
    ref, pad = dec.ref_features([["a dog"]])
    fr = torch.randn(1, 2, D_A)
    local = dec(hyp, ref, pad, fr)
    assert local.shape[-1] == len(vocab)
    full = dec.fuse(hyp, dec.context(ref, pad, fr))
    assert full.shape[-1] == lm.vocab_size
    outside = torch.ones(lm.vocab_size, dtype=torch.bool)
    outside[vocab] = False
    assert torch.isinf(full[..., outside]).all() and torch.isfinite(full[..., vocab]).all()
    torch.testing.assert_close(full[..., vocab], local)
    # b = 0 at the start: exactly the frozen pretrained rows (plus a zero bias)
    torch.testing.assert_close(dec.logits(hyp, full=False), hyp @ lm.lm_head_weight[vocab].T)
    out = decode(dec, [["a dog barks"]], fr, DecodingOptions(beam_size=2, max_len=5))
    assert out[0].tokens and set(out[0].tokens) <= set(vocab)
    with torch.no_grad():
        dec.head_b.add_(0.1)
    dec.save(tmp_path / "d")
    back = load_decoder(tmp_path / "d", lm)
    torch.testing.assert_close(back(hyp, ref, pad, fr), dec(hyp, ref, pad, fr))
    assert back.vocab_ids.tolist() == sorted(set(vocab))


def test_lowrank_training_with_a_feature_store(lm: FrozenLM, tmp_path: Path) -> None:
    caps = ["a dog barks", "rain falls on a roof", "a man speaks", "birds chirp"]
    store = LMFeatureStore(lm, 30, root=tmp_path / "feat")
    store.ensure(caps)
    again = LMFeatureStore(lm, 30, root=tmp_path / "feat")  # persisted: read back, not recomputed
    assert len(again) == 4
    ids = torch.tensor([[lm.bos_id] + lm.tokenize(["rain falls on a roof"])[0]])
    torch.testing.assert_close(
        again.get("rain falls on a roof").float(), lm.features(ids)[0], atol=2e-3, rtol=2e-3
    )
    assert again.get("not stored") is None
    ex = [
        (caps[i % 4], [caps[(i + 1) % 4], caps[(i + 2) % 4]], np.ones((1, D_A), np.float32) * i)
        for i in range(8)
    ]
    cfg = DecoderConfig(
        lm="tiny-gpt2",
        d_l=64,
        d_a=D_A,
        k=2,
        head="lowrank",
        head_rank=4,
        guidance="separate",
        residual=True,
    )
    tc = DecoderTrainConfig(batch_size=4, micro_batch=4, lr_max=3e-3)
    calls = []
    orig = lm.features_of
    lm.features_of = lambda seqs, **kw: calls.append(len(seqs)) or orig(seqs, **kw)  # type: ignore[method-assign]
    try:
        run = train_decoder(
            ex,
            cfg,
            lm,
            tmp_path / "run",
            epochs=4,
            train_cfg=tc,
            vocab_ids=grounded.vocabulary(lm, caps, 30),
            features=again,
        )
    finally:
        lm.features_of = orig  # type: ignore[method-assign]
    assert calls == []  # every caption came from the store
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert load_decoder(run, lm).cfg == cfg


def test_decoder_job_trains_with_the_schedule_it_is_given(lm: FrozenLM, tmp_path: Path) -> None:
    """``grounded.train(train_cfg=...)``'s path: a DecoderJob trains with that learning-rate
    schedule (recorded in the run's decoder_train.json) and its own batch size and seed;
    without one, with the paper's schedule, exactly the config train_decoder uses by default."""
    caps = ["a dog barks", "rain falls on a roof", "a man speaks", "birds chirp"]
    ex = [
        (caps[i % 4], [caps[(i + 1) % 4], caps[(i + 2) % 4]], np.ones((1, D_A), np.float32))
        for i in range(4)
    ]
    cfg = DecoderConfig(
        lm="tiny-gpt2",
        d_l=64,
        d_a=D_A,
        k=2,
        head="lowrank",
        head_rank=4,
        guidance="separate",
        residual=True,
    )
    p = grounded.Plan(corpus=None, train=ex, val=[], val_clips=[])  # type: ignore[arg-type]
    job = grounded.DecoderJob(
        p,
        lm,
        cfg,
        None,
        grounded.vocabulary(lm, caps, 30),
        2,
        lambda name, total: lambda n: None,
    )
    recorded = []
    for name, tcfg in (
        ("paper", None),
        ("annealed", DecoderTrainConfig(lr_max=5e-4, period_epochs=1.0, seed=9)),
    ):
        run = dataclasses.replace(job, train_cfg=tcfg).train(
            tmp_path / name, 1, seed=3, keep_state=False
        )
        recorded.append(json.loads((run / "decoder_train.json").read_text())["config"])
    paper, annealed = recorded
    assert paper == json.loads(
        json.dumps(dataclasses.asdict(DecoderTrainConfig(batch_size=2, seed=3)))
    )
    assert (
        annealed["lr_max"],
        annealed["period_epochs"],
        annealed["batch_size"],
        annealed["seed"],
    ) == (5e-4, 1.0, 2, 3)


def test_model_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audiocap_cli.pipeline import registry as models

    shipped = tmp_path / "shipped"
    (shipped / "tiny").mkdir(parents=True)
    (shipped / "tiny" / models.MODEL_INFO).write_text(
        json.dumps({"model": {}, "trained_on": "x", "validation": {"meteor": 0.2}})
    )
    monkeypatch.setattr(models, "SHIPPED_ROOT", shipped)
    built: list[str] = []
    monkeypatch.setattr(
        models,
        "materialise",
        lambda folder, say=None, progress=None: (
            built.append(folder.name) or tmp_path / f"built-{folder.name}"
        ),
    )
    mdir = tmp_path / "mine"
    mdir.mkdir()
    assert models.resolve(str(mdir), env={}) == mdir  # -m path
    assert models.resolve("tiny", env={}) == tmp_path / "built-tiny"  # -m name
    assert models.resolve(None, env={models.MODEL_ENV: str(mdir)}) == mdir  # env var
    assert models.resolve(None, env={models.MODEL_ENV: "tiny"}) == tmp_path / "built-tiny"
    monkeypatch.setattr(models, "DEFAULT_MODEL", "tiny")
    assert models.resolve(None, env={}) == tmp_path / "built-tiny"  # default
    assert models.resolve(str(mdir), env={models.MODEL_ENV: "tiny"}) == mdir  # -m wins over env
    with pytest.raises(ModelNotFoundError, match="no model named 'nope'.*known: tiny"):
        models.resolve("nope", env={})
    with pytest.raises(ModelNotFoundError, match="no such model directory"):
        models.resolve(str(tmp_path / "missing" / "dir"), env={})
    assert [m.name for m in models.list_models()] == ["tiny"]


def test_corpus_file_round_trip(tmp_path: Path) -> None:
    from audiocap_cli.config import save_config
    from audiocap_cli.pipeline import registry as models

    cfg = ls.LabelSpaceConfig(num_classes=4)
    save_config(cfg, tmp_path / ls.CONFIG_NAME)
    labels = np.array([[1, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    models.write_corpus(tmp_path, ["a dog barks", "rain, falls"], labels)
    first = (tmp_path / models.CORPUS_NAME).read_bytes()
    caps, back = models.read_corpus(tmp_path)
    assert caps == ["a dog barks", "rain, falls"] and (back == labels).all()
    models.write_corpus(tmp_path, caps, back)
    assert (tmp_path / models.CORPUS_NAME).read_bytes() == first  # deterministic bytes


def _shipped_default():
    from audiocap_cli.pipeline import registry as models

    found = {m.name: m for m in models.shipped_models()}
    if models.DEFAULT_MODEL not in found:
        pytest.fail(
            f"the default model {models.DEFAULT_MODEL!r} is not shipped in {models.SHIPPED_ROOT}"
        )
    return found[models.DEFAULT_MODEL]


def test_shipped_default_matches_the_code() -> None:
    """The shipped configs load into today's dataclasses with nothing unknown or missing."""
    from audiocap_cli.config import from_dict, to_dict
    from audiocap_cli.generation.decoder import DECODER_CONFIG
    from audiocap_cli.pipeline.modeldir import ModelConfig, ModelDir

    m = _shipped_default()
    info = json.loads((m.path / "model.json").read_text())
    assert to_dict(from_dict(ModelConfig, info["model"])) == info["model"]
    md = ModelDir(m.path)  # its decoder, if any (a retrieval-only default ships none)
    configs = [(DecoderConfig, md.decoder / DECODER_CONFIG)] if md.has_decoder() else []
    for cls, path in configs + [(ls.LabelSpaceConfig, m.path / ls.CONFIG_NAME)]:
        saved = json.loads(path.read_text())["config"]
        assert to_dict(from_dict(cls, saved)) == saved, path
    assert m.size_bytes < 40 * 2**20


@pytest.mark.slow
def test_shipped_default_captions_real_audio_without_m(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_with_smollm2: Path
) -> None:
    """`audiocap caption FILE` with no -m: the default is materialised and its weights load."""
    import subprocess
    import sys

    from _shared import long_wav

    m = _shipped_default()
    long_wav(tmp_path / "tone.wav", 3.0)
    env = {k: v for k, v in __import__("os").environ.items() if k != "AUDIOCAP_MODEL"}
    env["AUDIOCAP_CACHE"] = str(cache_with_smollm2)  # empty but for the converted SmolLM2
    run = subprocess.run(
        [sys.executable, "-m", "audiocap_cli", "caption", str(tmp_path / "tone.wav"), "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr
    rec = json.loads(run.stdout.splitlines()[0])
    assert rec["caption"] and len(rec["guidance"]) == 5
    assert (
        rec["caption"] in {g["caption"] for g in rec["guidance"]} or (m.path / "decoder").is_dir()
    )
    from audiocap_cli.pipeline.modeldir import ModelDir

    built = next(
        (tmp_path / "cache" / "models").glob(f"{m.name}-*")
    )  # links to the shipped decoder
    assert ModelDir(built).has_decoder() == ModelDir(m.path).has_decoder()
    listed = subprocess.run(
        [sys.executable, "-m", "audiocap_cli", "models", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    rows = [json.loads(x) for x in listed.stdout.splitlines()]
    assert any(r["default"] and r["validation"] for r in rows)


def test_decoder_guidance_is_retrieved_at_the_training_power(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Captioning queries at the index's power; the decoder's training and validation guidance
    stay at the encoder's fitted guidance power, so changing the index's power does not change
    what the decoder learns from."""
    labels, caps, _ = _corpus()
    lab = grounded.LabelledCaptions(caps, labels, np.arange(6), [f"c{i}" for i in range(6)], None)  # type: ignore[arg-type]
    val = grounded.LabelledCaptions(caps[:2], labels[:2], np.arange(2), ["v0", "v1"], None)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    noisy = np.clip(labels + rng.uniform(0.0, 0.6, labels.shape), 0.0, 1.0).astype(np.float32)
    monkeypatch.setattr(
        grounded, "simulated", lambda lb, prior, seed, enc="yamnet", sim=None: noisy[: len(lb)]
    )
    powers: list[float] = []
    real = ls.corpus_guidance
    monkeypatch.setattr(
        ls,
        "corpus_guidance",
        lambda corpus, s, cfg, *a, **kw: (
            powers.append(cfg.score_power) or real(corpus, s, cfg, *a, **kw)
        ),
    )
    guidance_power = grounded.fit_of("yamnet").guidance_power
    assert ls.LabelSpaceConfig().score_power != guidance_power
    plans = [
        grounded.plan(
            lab, ls.LabelSpaceConfig(num_classes=4, ancestors=False, score_power=p), 2, None, val
        )
        for p in (1.0, 4.0)
    ]
    assert powers and set(powers) == {guidance_power}
    assert [e[1] for e in plans[0].train] == [e[1] for e in plans[1].train]
    assert [c[1] for c in plans[0].val_clips] == [c[1] for c in plans[1].val_clips]


def test_plan_simulates_training_and_validation_input_from_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Training and validation input are simulated from the clips' labels alone, each with its
    own seed; never from the captions, which are validation's references."""
    labels, caps, _ = _corpus()
    lab = grounded.LabelledCaptions(caps, labels, np.arange(6), [f"c{i}" for i in range(6)], None)  # type: ignore[arg-type]
    val = grounded.LabelledCaptions(caps[:2], labels[:2], np.arange(2), ["v0", "v1"], None)  # type: ignore[arg-type]
    seen: dict[int, np.ndarray] = {}

    def fake(
        lb: np.ndarray, prior: np.ndarray, seed: int, enc: str = "yamnet", sim: object = None
    ) -> np.ndarray:
        seen[seed] = lb.copy()
        return np.asarray(lb, np.float32)

    monkeypatch.setattr(grounded, "simulated", fake)
    grounded.plan(lab, ls.LabelSpaceConfig(num_classes=4, ancestors=False), 2, None, val)
    assert np.array_equal(seen[grounded.TRAIN_SIM_SEED], labels)
    assert np.array_equal(seen[grounded.VAL_SIM_SEED], val.clip_labels)


def test_short_clip_scores_leave_out_the_zero_padding(tmp_path: Path) -> None:
    """A 3 s clip is zero-padded to the 10 s window; YAMNet scores the padding "Silence". What
    label retrieval and the decoder read is pooled over the audible frames only, so it equals
    the scores of the unpadded clip (before, "Silence" ~1.0 reached every short clip's query)."""
    from types import SimpleNamespace

    from _shared import long_wav

    from audiocap_cli.audio import io as audio
    from audiocap_cli.audio.encoders import load_encoder
    from audiocap_cli.audio.features import FeatureCache
    from audiocap_cli.audio.io import ClipPolicy
    from audiocap_cli.pipeline.captioner import Captioner
    from audiocap_cli.retrieval.kinds import LabelSpace, MeanPool

    enc = load_encoder("yamnet")
    long_wav(tmp_path / "tone.wav", 3.0)
    f = FeatureCache(tmp_path / "cache").get(tmp_path / "tone.wav", enc, ClipPolicy(seconds=10.0))
    assert f.scores is not None and f.scores.shape[1] == 20
    silence = enc.class_names().index("Silence")
    assert f.scores[0].max(axis=0)[silence] > 0.9  # the padding, pooled over all 20 frames
    labels = LabelSpace(SimpleNamespace(cfg=ls.LabelSpaceConfig()))
    me = SimpleNamespace(retrieval=labels, encoder=enc)
    got = Captioner.window_scores(me, f, 0)  # type: ignore[arg-type]
    assert got is not None and got.shape == (1, 521)
    with torch.inference_mode():
        alone = (
            enc.encode(torch.from_numpy(audio.load(tmp_path / "tone.wav", enc.sample_rate))[None])
            .scores[0]
            .numpy()
        )
    assert alone.shape[0] == enc.num_frames(3.0) == 6
    np.testing.assert_allclose(got[0], alone.max(axis=0), atol=1e-4)
    assert got[0, silence] < 0.5
    paper = SimpleNamespace(retrieval=MeanPool(lambda fr: fr, "mean:x"), encoder=enc)
    # frame retrievers: scores as cached
    assert Captioner.window_scores(paper, f, 0).shape == (20, 521)  # type: ignore[arg-type,union-attr]
