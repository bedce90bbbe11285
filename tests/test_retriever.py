"""Retriever: EmbedNet shapes/norms, triplet mining, a tiny training run, resume, load checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch

from audiocap_cli.config import load_config
from audiocap_cli.errors import ConfigMismatchError, DatasetError, ModelNotFoundError
from audiocap_cli.retrieval.retriever import (
    EmbedNet,
    RetrieverConfig,
    embed,
    load_retriever,
    mean_pool,
    retriever_id,
)
from audiocap_cli.training.retriever import precision_at_1, train_retriever, triplet_loss

# Tiny but structured: 4 frames of 64 dims, 8 classes whose signal sits in 8 dims under a
# large per-clip offset in the other 56 (so mean pooling retrieves poorly and a learned
# projection can do much better).
T, D, CLASSES, SIG = 4, 64, 8, 8
TINY = RetrieverConfig(
    encoder="test",
    encoder_fingerprint="fp0",
    d_a=D,
    frames=T,
    d_proj=16,
    heads=2,
    ff_dim=32,
    batch_size=64,
    dropout=0.1,
)


def _clips(n: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(99).normal(size=(CLASSES, T, SIG)).astype(np.float32)
    y = np.arange(n) % CLASSES
    x = rng.normal(size=(n, T, D)).astype(np.float32) * 0.5
    x[:, :, :SIG] += protos[y]
    x[:, :, SIG:] += rng.normal(size=(n, 1, D - SIG)).astype(np.float32) * 2.0
    similar = [np.flatnonzero((y == y[i]) & (np.arange(n) != i)) for i in range(n)]
    return x, similar


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_embednet_shapes_and_unit_norm() -> None:
    net = EmbedNet(RetrieverConfig(d_a=1024, frames=20)).eval()
    out = net(torch.randn(3, 20, 1024))
    assert out.shape == (3, 20 * 128) and net.cfg.dim == 2560
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    # d_a == d_proj: no projection layer.
    small = EmbedNet(RetrieverConfig(d_a=128, frames=2))
    assert isinstance(small.proj, torch.nn.Identity)
    # init: weight matrices N(0, 0.02), biases 0, LayerNorm 1/0
    w = net.layer.linear1.weight
    assert (
        abs(float(w.detach().std()) - 0.02) < 0.002
        and float(net.layer.linear1.bias.detach().abs().max()) == 0.0
    )
    assert float(net.layer.norm1.weight.detach().min()) == 1.0


def test_embed_batches_match_forward_and_checks_shape() -> None:
    torch.manual_seed(0)
    net = EmbedNet(TINY)
    x = np.random.default_rng(0).normal(size=(10, T, D)).astype(np.float32)
    e = embed(net, x, batch_size=3)
    assert e.dtype == np.float32 and e.shape == (10, TINY.dim)
    with torch.no_grad():
        assert np.allclose(e, net.eval()(torch.from_numpy(x)).numpy(), atol=1e-5)
    with pytest.raises(ConfigMismatchError, match=r"\[N, 4, 64\]"):
        embed(net, x[:, :2])


def test_mean_pool_unit_norm() -> None:
    x = np.random.default_rng(1).normal(size=(5, 7, 3)).astype(np.float32)
    m = mean_pool(x)
    assert m.shape == (5, 3) and np.allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-6)
    assert np.allclose(m[0], x[0].mean(0) / np.linalg.norm(x[0].mean(0)), atol=1e-6)


def test_triplet_loss_zero_when_separated_positive_when_collapsed() -> None:
    # Two tight, far-apart pairs: every negative is beyond D(a,p) + margin.
    emb = torch.tensor([[1.0, 0.0], [0.99, 0.141], [-1.0, 0.0], [-0.99, -0.141]])
    emb = emb / emb.norm(dim=1, keepdim=True)
    similar = torch.tensor(
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool
    )
    loss, stats = triplet_loss(emb, similar, margin=0.3)
    assert float(loss) == 0.0 and stats.anchors == 4 and stats.active == 0.0
    collapsed = torch.ones(4, 2) / 2**0.5
    loss, stats = triplet_loss(collapsed, similar, margin=0.3)
    assert float(loss) == pytest.approx(0.3) and stats.active == 1.0


def test_semi_hard_selection_hand_made() -> None:
    # 1-D points; anchor 0 at 0, its only positive 1 at 0.5 (D = 0.25). Negatives:
    # 2 at 0.3 (D=0.09, harder than the positive), 3 at 0.6 (D=0.36, semi-hard: 0.25<=0.36<0.55),
    # 4 at 0.7 (D=0.49, semi-hard but farther), 5 at 2.0 (D=4, easy).
    x = torch.tensor([[0.0], [0.5], [0.3], [0.6], [0.7], [2.0]])
    similar = torch.zeros(6, 6, dtype=torch.bool)
    similar[0, 1] = similar[1, 0] = True
    loss, stats = triplet_loss(x, similar, margin=0.3)
    assert stats.positive.tolist() == [1, 0, -1, -1, -1, -1]
    assert int(stats.negative[0]) == 3  # the closest semi-hard negative
    # Anchor 1 (at 0.5): positive 0 at D=0.25; negatives at D 0.04, 0.01, 0.04, 2.25 -> only
    # 5 is farther, beyond the margin: loss 0 for that anchor.
    assert int(stats.negative[1]) == 5
    assert float(loss) == pytest.approx((0.25 - 0.36 + 0.3) / 2, abs=1e-6)
    assert stats.anchors == 2 and stats.semi_hard == 0.5 and stats.fallback == 0.0
    # Every negative closer than the positive: fallback to the farthest negative.
    x2 = torch.tensor([[0.0], [1.0], [0.2], [0.5]])
    sim2 = torch.zeros(4, 4, dtype=torch.bool)
    sim2[0, 1] = sim2[1, 0] = True
    loss2, st2 = triplet_loss(x2, sim2, margin=0.3)
    # anchor 0: negatives at D 0.04, 0.25 (< D(a,p) = 1) -> 3; anchor 1 (at 1.0): D 0.64, 0.25 -> 2
    assert st2.negative.tolist()[:2] == [3, 2] and st2.fallback == 1.0
    assert float(loss2) == pytest.approx(((1.0 - 0.25 + 0.3) + (1.0 - 0.64 + 0.3)) / 2, abs=1e-6)


def test_triplet_loss_random_positive_follows_generator() -> None:
    emb = torch.nn.functional.normalize(
        torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), dim=1
    )
    similar = torch.ones(8, 8, dtype=torch.bool)
    similar[:, 6:] = similar[6:, :] = False
    similar[6:, 6:] = True
    a = triplet_loss(emb, similar, 0.3, torch.Generator().manual_seed(5))[1].positive
    b = triplet_loss(emb, similar, 0.3, torch.Generator().manual_seed(5))[1].positive
    assert torch.equal(a, b)
    for i, p in enumerate(a.tolist()):
        assert p != i and bool(similar[i, p])


def test_precision_at_1() -> None:
    emb = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [9.0, 0.0]], np.float32)
    similar = [np.array([1]), np.array([0]), np.array([3]), np.array([0]), np.array([], np.int64)]
    # labels are made symmetric: 3~2 and 3~0; clip 4 has none and is not counted
    assert precision_at_1(emb, similar) == 1.0
    similar[2] = np.array([], np.int64)
    similar[3] = np.array([0])
    assert precision_at_1(emb, similar) == pytest.approx(2 / 3)
    # CSR-shaped labels (scipy sparse, or anything with indptr/indices) are accepted too.
    csr = scipy.sparse.csr_matrix(
        (np.ones(3, bool), (np.array([0, 1, 3]), np.array([1, 0, 0]))), shape=(5, 5)
    )
    assert precision_at_1(emb, csr) == pytest.approx(2 / 3)


def test_tiny_training_beats_mean_pool_and_saves(tmp_path: Path) -> None:
    train, train_sim = _clips(160, 1)
    val, val_sim = _clips(64, 2)
    calls: list[int] = []
    run = train_retriever(
        train, train_sim, val, val_sim, TINY, tmp_path / "run", epochs=30, progress=calls.append
    )
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == list(range(1, 31)) and calls == [1] * 30
    assert min(r["val_loss"] for r in rows[-5:]) < 0.6 * rows[0]["val_loss"]
    net = load_retriever(run, expected_encoder_fingerprint="fp0")
    assert not net.training
    p1_trained = precision_at_1(embed(net, val), val_sim)
    p1_mean = precision_at_1(mean_pool(val), val_sim)
    assert p1_trained > 0.8 and p1_trained > p1_mean + 0.3
    assert load_config(RetrieverConfig, run / "retriever.json") == TINY
    assert (
        retriever_id(run).startswith("retriever:")
        and len(retriever_id(run)) == len("retriever:") + 16
    )
    # best.safetensors is the best validation epoch's weights
    best = min(rows, key=lambda r: r["val_loss"])
    assert [r["epoch"] for r in rows if r["best"]][-1] == best["epoch"]


def test_interrupted_run_resumes_to_the_same_metrics(tmp_path: Path) -> None:
    train, train_sim = _clips(64, 3)
    val, val_sim = _clips(32, 4)
    keys = ("epoch", "train_loss", "val_loss", "val_p_at_1", "best")
    whole = train_retriever(train, train_sim, val, val_sim, TINY, tmp_path / "whole", epochs=4)
    part = tmp_path / "part"
    train_retriever(
        train, train_sim, val, val_sim, TINY, part, epochs=2, keep_state=True
    )  # as if killed
    assert (part / "last.safetensors").is_file() and not (whole / "last.safetensors").exists()
    # A run killed after logging epoch 3 but before its checkpoint: the stray row is dropped.
    with open(part / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3, "train_loss": -1}) + "\n")
    train_retriever(train, train_sim, val, val_sim, TINY, part, epochs=4, keep_state=True)
    a, b = _metrics(whole), _metrics(part)
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b):
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-7), (k, ra, rb)
    # Running again with the epochs already done (state kept) trains nothing more, and the
    # finished run then deletes its state.
    train_retriever(train, train_sim, val, val_sim, TINY, part, epochs=4)
    assert len(_metrics(part)) == 4 and not (part / "last.safetensors").exists()
    # resume=False starts over.
    train_retriever(train, train_sim, val, val_sim, TINY, part, epochs=1, resume=False)
    assert len(_metrics(part)) == 1


def test_resume_with_other_config_or_data_refused(tmp_path: Path) -> None:
    train, train_sim = _clips(32, 5)
    val, val_sim = _clips(16, 6)
    run = train_retriever(
        train, train_sim, val, val_sim, TINY, tmp_path / "run", epochs=1, keep_state=True
    )
    other = RetrieverConfig(**{**TINY.__dict__, "margin": 0.5})
    with pytest.raises(ConfigMismatchError, match="margin"):
        train_retriever(train, train_sim, val, val_sim, other, run, epochs=2)
    fewer, fewer_sim = _clips(24, 5)
    with pytest.raises(ConfigMismatchError, match="other data"):
        train_retriever(fewer, fewer_sim, val, val_sim, TINY, run, epochs=2)


def test_bad_inputs_and_missing_or_mismatched_model(tmp_path: Path) -> None:
    train, train_sim = _clips(32, 7)
    val, val_sim = _clips(16, 8)
    none = [np.array([], np.int64)] * 16
    with pytest.raises(DatasetError, match="validate"):
        train_retriever(train, train_sim, val, none, TINY, tmp_path / "r", epochs=1)
    with pytest.raises(DatasetError, match="similarity lists"):
        train_retriever(train, train_sim[:5], val, val_sim, TINY, tmp_path / "r", epochs=1)
    with pytest.raises(ConfigMismatchError, match="shape"):
        train_retriever(train[:, :2], train_sim, val, val_sim, TINY, tmp_path / "r", epochs=1)
    with pytest.raises(ModelNotFoundError, match="no trained retriever"):
        load_retriever(tmp_path / "absent")
    run = train_retriever(train, train_sim, val, val_sim, TINY, tmp_path / "ok", epochs=1)
    with pytest.raises(ConfigMismatchError, match="fingerprint"):
        load_retriever(run, expected_encoder_fingerprint="another")
