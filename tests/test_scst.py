"""Self-critical sequence training: the CIDEr-D reward, sampling, log-probs, resumable runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _shared import D_A, EXAMPLE_REFS, make_decoder
from safetensors.torch import load_file

from audiocap_cli.decoder import load_decoder
from audiocap_cli.errors import AudiocapError, ConfigMismatchError, DatasetError
from audiocap_cli.lm import FrozenLM
from audiocap_cli.scst import (
    CiderD,
    SCSTConfig,
    sample,
    sequence_logprob,
    step_clips,
    train_scst,
)

HYPS = {"a": "a dog barks while a man talks", "b": "water is running into a sink"}


def clips(n: int = 6, seed: int = 0) -> list[tuple[list[str], np.ndarray, list[str]]]:
    rng = np.random.default_rng(seed)
    refs = list(EXAMPLE_REFS.values())
    return [
        (
            ["a dog barks", "water runs"][: 1 + i % 2],
            rng.standard_normal((3, D_A)).astype(np.float32),
            refs[i % 2],
        )
        for i in range(n)
    ]


def test_cider_d_matches_pycocoevalcap() -> None:
    """With the scored clips as the corpus, the reward is pycocoevalcap's CIDEr-D per clip."""
    from pycocoevalcap.cider.cider import Cider

    gts = {k: list(v) for k, v in EXAMPLE_REFS.items()}
    want_corpus, want = Cider().compute_score(gts, {k: [HYPS[k]] for k in gts})
    reward = CiderD(list(gts.values()))
    got = [float(reward.scores([HYPS[k]], gts[k])[0]) for k in gts]
    assert got == pytest.approx(list(want), rel=1e-9)
    assert np.mean(got) == pytest.approx(want_corpus)
    # a reference scores high, an unrelated caption zero
    assert reward.scores(["a dog barks in the distance", "birds sing"], gts["a"]).tolist()[1] == 0.0


@pytest.mark.parametrize("head", ["full", "lowrank"])
def test_samples_and_their_logprobs(lm: FrozenLM, head: str) -> None:
    """Sampled tokens stay in the head's vocabulary, stop at EOS, and their summed log-prob
    from the sampling's cached features equals a full teacher-forced recompute."""
    vocab = sorted(
        {t for c in ["a dog barks", "water runs", "a man talks"] for t in lm.tokenize([c])[0]}
    )
    dec = make_decoder(lm, guidance="separate", head=head) if head == "full" else None
    if dec is None:
        from audiocap_cli.decoder import DecoderConfig, GuidedDecoder

        torch.manual_seed(0)
        dec = GuidedDecoder(
            DecoderConfig(lm="tiny-gpt2", d_l=64, d_a=D_A, guidance="separate", head="lowrank"),
            lm,
            vocab,
        ).eval()
    batch = clips(3)
    tokens, feats, lengths = sample(dec, batch, 4, 9, 1.0, torch.Generator().manual_seed(0))
    again = sample(dec, batch, 4, 9, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again[0])  # seeded
    assert tokens.shape[0] == feats.shape[0] == 12 and feats.shape[1] == tokens.shape[1] <= 9
    for row, n in zip(tokens.tolist(), lengths.tolist()):
        body = [t for t in row if t >= 0]
        assert len(body) == n and (row[n:] == [-100] * (len(row) - n))
        assert lm.eos_id not in body[:-1] and body[0] != lm.eos_id
        if head == "lowrank":
            assert set(body) <= set(dec.vocab_ids.tolist())
    got = sequence_logprob(dec, batch, tokens, feats)
    with torch.no_grad():
        for i, row in enumerate(tokens.tolist()):
            body = [t for t in row if t >= 0]
            clip = batch[i // 4]
            ref, pad = dec.ref_features([clip[0]])
            ids = torch.tensor([[lm.bos_id] + body[:-1]])
            logits = dec(lm.features(ids), ref, pad, torch.from_numpy(clip[1])[None])[0]
            want = (
                F.log_softmax(logits, -1)
                .gather(1, dec.local_targets(torch.tensor(body))[:, None])
                .sum()
            )
            assert float(got[i]) == pytest.approx(float(want), abs=1e-4)
    got.sum().backward()  # gradients reach the trainable layers
    assert dec.ref_attn.q.weight.grad is not None


def _small_vocab_decoder(lm: FrozenLM):
    """A tiny decoder whose low-rank head predicts only the tokens of a few captions, so that
    random samples hit the reference's words often enough to learn from."""
    from audiocap_cli.decoder import DecoderConfig, GuidedDecoder

    vocab = sorted({t for c in CORPUS for t in lm.tokenize([c])[0]})
    torch.manual_seed(0)
    cfg = DecoderConfig(lm="tiny-gpt2", d_l=64, d_a=D_A, guidance="separate", head="lowrank")
    return GuidedDecoder(cfg, lm, vocab).eval()


CORPUS = ["a dog barks", "water runs", "a man talks", "birds sing"]


def test_scst_raises_the_reward_and_resumes(lm: FrozenLM, tmp_path) -> None:
    """Steps on one reference caption raise the sampled captions' CIDEr-D; a run interrupted
    and resumed ends with the weights of an uninterrupted one."""
    data = [(["water runs"], np.ones((1, D_A), np.float32), ["a dog barks"])] * 8
    reward = CiderD([[c] for c in CORPUS])
    cfg = SCSTConfig(samples=4, clips_per_step=4, steps=4, lr=1e-2, max_len=6, save_every=2)
    whole = train_scst(_small_vocab_decoder(lm), data, tmp_path / "whole", cfg, reward)
    # interrupted after step 2 (its state kept, as a killed run's last checkpoint would be)
    train_scst(
        _small_vocab_decoder(lm),
        data,
        tmp_path / "part",
        SCSTConfig(**{**cfg.__dict__, "steps": 2}),
        reward,
        keep_state=True,
    )
    seen: list[int] = []
    part = train_scst(
        _small_vocab_decoder(lm), data, tmp_path / "part", cfg, reward, progress=seen.append
    )
    assert seen == [8, 4, 4]  # the resumed run's progress starts at its 2 finished steps of 4 clips
    a, b = (
        load_file(str(whole / "decoder.safetensors")),
        load_file(str(part / "decoder.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    load_decoder(whole, lm)  # a loadable decoder
    assert not (whole / "last.safetensors").exists()  # a finished run drops its state
    # resuming from other starting weights is refused
    train_scst(
        _small_vocab_decoder(lm),
        data,
        tmp_path / "other",
        SCSTConfig(**{**cfg.__dict__, "steps": 1}),
        reward,
        keep_state=True,
    )
    moved = _small_vocab_decoder(lm)
    with torch.no_grad():
        moved.head_bias += 1.0
    with pytest.raises(ConfigMismatchError, match="other decoder weights"):
        train_scst(moved, data, tmp_path / "other", cfg, reward)
    long = train_scst(
        _small_vocab_decoder(lm),
        data,
        tmp_path / "long",
        SCSTConfig(
            samples=4,
            clips_per_step=8,
            steps=30,
            lr=1e-2,
            max_len=6,
            save_every=30,
            temperature=1.0,
            fmean_weight=0.0,
        ),
        reward,
    )
    r = [json.loads(x)["reward"] for x in (long / "metrics.jsonl").read_text().splitlines()]
    assert np.mean(r[-5:]) > np.mean(r[:5]) + 1.0, r


def test_scst_refuses_bad_input(lm: FrozenLM, tmp_path) -> None:
    dec = make_decoder(lm, guidance="separate")
    with pytest.raises(DatasetError):
        train_scst(dec, [(["x"], np.ones((1, D_A), np.float32), [""])], tmp_path)
    with pytest.raises(DatasetError):
        train_scst(dec, [(["x"], np.ones((1, 3), np.float32), ["a dog"])], tmp_path)
    with pytest.raises(AudiocapError):
        SCSTConfig(samples=1)


def test_step_clips_cover_each_pass() -> None:
    cfg = SCSTConfig(clips_per_step=3)
    first = np.concatenate([step_clips(10, cfg, s) for s in range(3)])
    assert sorted(first.tolist()) == sorted(set(first.tolist())) and len(first) == 9
    assert not np.array_equal(step_clips(10, cfg, 3), step_clips(10, cfg, 0))  # a new permutation


def test_reward_adds_the_fmean() -> None:
    from audiocap_cli.decoding import unigram_fmean
    from audiocap_cli.scst import Reward
    from audiocap_cli.zeroshot import words

    refs = EXAMPLE_REFS["a"]
    cider = CiderD(list(EXAMPLE_REFS.values()))
    hyps = [HYPS["a"], "a dog", "water runs"]
    f = unigram_fmean([words(h) for h in hyps], [words(r) for r in refs]).mean(1)
    np.testing.assert_allclose(
        Reward(cider, 0.5).scores(hyps, refs), cider.scores(hyps, refs) + 0.5 * f
    )
    np.testing.assert_array_equal(Reward(cider, 0.0).scores(hyps, refs), cider.scores(hyps, refs))
    assert f[2] == 0.0 and f[0] > f[1] > 0  # longer, matching captions recall more
