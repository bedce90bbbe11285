"""The guided decoder (eqs. 9-13): shapes, masks, guidance layouts, persistence, training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _shared import D_A, make_decoder
from safetensors.torch import load_file

from audiocap_cli.errors import AudiocapError, ConfigMismatchError, DatasetError, ModelNotFoundError
from audiocap_cli.generation.decoder import DecoderConfig, load_decoder
from audiocap_cli.generation.lm import FrozenLM, load_lm
from audiocap_cli.training.decoder import DecoderTrainConfig, draw_guidance, lr_at, train_decoder
from audiocap_cli.training.rundir import RunDir

make = make_decoder


def test_config_validation() -> None:
    DecoderConfig(d_l=768, d_r=60, heads=4)  # the paper's GPT-2 setting
    with pytest.raises(AudiocapError, match="heads"):
        DecoderConfig(d_l=576, d_r=60, heads=7)
    with pytest.raises(AudiocapError, match="guidance"):
        DecoderConfig(guidance="mixed")


def test_forward_shapes_and_trainable_parts_only(lm: FrozenLM) -> None:
    dec = make(lm)
    hyp = lm.features(torch.tensor([[50256, 32, 3290], [50256, 64, 64]]))
    ref, ref_pad = dec.ref_features([["a dog barks", "a cat"], ["rain"]])
    logits = dec(hyp, ref, ref_pad, torch.randn(2, 7, D_A))
    assert logits.shape == (2, 3, 50257)
    keys = set(dec.state_dict())
    assert not any(k.startswith(("body", "h.", "wte", "wpe")) for k in keys)
    assert {"head", "ref_attn.q.weight", "audio_proj.weight", "audio_out.weight"} <= keys
    # the head starts as the pretrained one but is a copy: training it leaves the LM alone
    assert torch.equal(dec.head, lm.lm_head_weight)
    assert dec.head.data_ptr() != lm.lm_head_weight.data_ptr()
    assert dec.audio_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)  # N(0, 0.02) init


def test_guidance_layouts(lm: FrozenLM) -> None:
    caps = ["a dog barks", "a cat meows"]
    concat = make(lm, guidance="concat")
    ref, pad = concat.ref_features([caps])
    seq = [50256] + lm.tokenize([caps[0]])[0] + [50256] + lm.tokenize([caps[1]])[0]
    torch.testing.assert_close(ref[0], lm.features(torch.tensor([seq]))[0])
    assert not pad.any()
    sep = make(lm, guidance="separate")
    ref, pad = sep.ref_features([caps, ["rain"], []])
    each = [lm.features(torch.tensor([[50256] + t]))[0] for t in lm.tokenize(caps)]
    torch.testing.assert_close(ref[0], torch.cat(each), rtol=1e-3, atol=1e-3)  # float16 cache
    assert pad[1].sum() == ref.shape[1] - 2 and pad[2].sum() == ref.shape[1] - 1
    assert len(sep.ref_cache) == 4  # 3 captions + the empty-guidance entry
    # at most k captions are used
    k2 = make(lm, guidance="separate", k=2)
    assert k2.ref_features([["a", "b", "c"]])[0].shape[1] == 4


def test_padding_is_masked(lm: FrozenLM) -> None:
    dec = make(lm)
    hyp = lm.features(torch.tensor([[50256, 32, 3290]]))
    frames = torch.randn(1, 5, D_A)
    ref, pad = dec.ref_features([["a dog barks"]])
    alone = dec(hyp, ref, pad, frames)
    # the same clip batched with a longer one: extra padding in refs and frames
    ref2, pad2 = dec.ref_features([["a dog barks"], ["a much longer caption about rain and wind"]])
    frames2 = torch.cat(
        [torch.cat([frames, torch.full((1, 4, D_A), 99.0)], 1), torch.randn(1, 9, D_A)]
    )
    fpad = torch.zeros(2, 9, dtype=torch.bool)
    fpad[0, 5:] = True
    batched = dec(hyp.expand(2, -1, -1), ref2, pad2, frames2, fpad)
    torch.testing.assert_close(batched[:1], alone, rtol=1e-4, atol=1e-4)


def test_audio_switch(lm: FrozenLM) -> None:
    hyp = lm.features(torch.tensor([[50256, 32]]))
    noaudio = make(lm, use_audio=False)
    ref, pad = noaudio.ref_features([["a dog"]])
    assert noaudio(hyp, ref, pad, None).shape == (1, 2, 50257)
    audio = make(lm)
    with pytest.raises(AudiocapError, match="frames"):
        audio(hyp, ref, pad, None)
    with pytest.raises(ConfigMismatchError, match="d_a"):
        audio(hyp, ref, pad, torch.randn(1, 3, D_A + 1))
    # the audio path changes the output (eq. 12 is wired in)
    a, b = (
        audio(hyp, ref, pad, torch.randn(1, 3, D_A)),
        audio(hyp, ref, pad, torch.randn(1, 3, D_A)),
    )
    assert not torch.allclose(a, b)


def test_save_load_round_trip(lm: FrozenLM, tmp_path: Path) -> None:
    dec = make(lm)
    with torch.no_grad():
        dec.head.add_(0.01)  # as if trained
    dec.save(tmp_path / "m")
    saved = load_file(str(tmp_path / "m" / "decoder.safetensors"))
    assert set(saved) == set(dec.state_dict())
    meta = json.loads((tmp_path / "m" / "decoder.json").read_text())
    assert meta["lm_name"] == "tiny-gpt2" and meta["lm_fingerprint"] == lm.fingerprint
    back = load_decoder(tmp_path / "m", lm)
    hyp = lm.features(torch.tensor([[50256, 32]]))
    ref, pad = dec.ref_features([["a dog"]])
    fr = torch.randn(1, 3, D_A)
    torch.testing.assert_close(back(hyp, ref, pad, fr), dec(hyp, ref, pad, fr))
    with pytest.raises(ConfigMismatchError, match="d_r"):
        load_decoder(
            tmp_path / "m", lm, expected=DecoderConfig(lm="tiny-gpt2", d_l=64, d_a=D_A, d_r=32)
        )
    other = load_lm("tiny-gpt2")
    with torch.no_grad():
        next(other.body.parameters()).mul_(2.0)
    with pytest.raises(ConfigMismatchError, match="language model"):
        load_decoder(tmp_path / "m", other)
    with pytest.raises(ModelNotFoundError):
        load_decoder(tmp_path / "nothing", lm)


def test_lr_schedule_and_guidance_draws() -> None:
    t = DecoderTrainConfig()
    assert lr_at(0, t) == pytest.approx(1e-4)
    assert lr_at(10, t) == pytest.approx((1e-4 + 1e-6) / 2)
    assert lr_at(19.999, t) == pytest.approx(1e-6, abs=1e-8)
    assert lr_at(20, t) == pytest.approx(1e-4)  # warm restart
    rng = np.random.default_rng(0)
    pool = [f"c{i}" for i in range(8)]
    draws = [draw_guidance(pool, 5, rng) for _ in range(20)]
    assert all(len(d) == 5 == len(set(d)) and set(d) <= set(pool) for d in draws)
    assert len({tuple(d) for d in draws}) > 1  # random subsets/orders each time
    assert sorted(draw_guidance(pool[:3], 5, rng)) == pool[:3]  # short pool: all of it, no repeats


def _examples(n: int, seed: int = 0) -> list[tuple[str, list[str], np.ndarray]]:
    caps = [
        "a dog barks",
        "rain falls on a roof",
        "a man speaks",
        "birds chirp",
        "a car passes",
        "water flows",
    ]
    rng = np.random.default_rng(seed)
    return [
        (
            caps[i % 6],
            [caps[(i + j) % 6] for j in range(1, 4)],
            rng.standard_normal((4 + i % 3, D_A)).astype(np.float32),
        )
        for i in range(n)
    ]


def test_training_resumes_exactly(lm: FrozenLM, tmp_path: Path) -> None:
    cfg = DecoderConfig(lm="tiny-gpt2", d_l=64, d_a=D_A, k=2)  # dropout on: RNG must resume too
    tc = DecoderTrainConfig(batch_size=4, micro_batch=2, lr_max=1e-3)
    ex, val = _examples(6), _examples(2, seed=1)
    straight = train_decoder(
        ex, cfg, lm, tmp_path / "a", epochs=3, val_examples=val, train_cfg=tc, keep_state=True
    )
    train_decoder(
        ex, cfg, lm, tmp_path / "b", epochs=2, val_examples=val, train_cfg=tc, keep_state=True
    )
    seen: list[int] = []
    resumed = train_decoder(
        ex,
        cfg,
        lm,
        tmp_path / "b",
        epochs=3,
        val_examples=val,
        train_cfg=tc,
        progress=seen.append,
        keep_state=True,
    )
    # the two finished epochs are reported at once, as done; then only the third epoch ran
    assert seen[0] == 2 * len(ex) and sum(seen[1:]) == len(ex)
    rows = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["train_loss"] > rows[-1]["train_loss"]
    a = RunDir(straight).resume()[0]
    b = RunDir(resumed).resume()[0]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    dec = load_decoder(resumed, lm)  # best epoch's weights + config, loadable
    assert dec.cfg == cfg
    # the best epoch's weights are written once, as decoder.safetensors (no best.safetensors copy)
    assert sorted(p.name for p in resumed.iterdir()) == [
        "decoder.json",
        "decoder.safetensors",
        "decoder_train.json",
        "last.safetensors",
        "metrics.jsonl",
    ]
    # resuming with another config is refused
    with pytest.raises(ConfigMismatchError, match="k:"):
        train_decoder(
            ex,
            DecoderConfig(lm="tiny-gpt2", d_l=64, d_a=D_A, k=3),
            lm,
            tmp_path / "b",
            epochs=4,
            train_cfg=tc,
        )
    with pytest.raises(ConfigMismatchError, match="lr_max"):  # and another schedule too
        train_decoder(
            ex,
            cfg,
            lm,
            tmp_path / "b",
            epochs=4,
            train_cfg=dataclasses.replace(tc, lr_max=1e-2),
        )


def test_training_rejects_bad_examples(lm: FrozenLM, tmp_path: Path) -> None:
    cfg = DecoderConfig(lm="tiny-gpt2", d_l=64, d_a=D_A)
    bad = [
        ("a dog", ["a cat"], None),
        ("", ["x"], np.zeros((3, D_A))),
        ("rain", [], np.zeros((3, 5))),
    ]
    with pytest.raises(DatasetError, match="3 problem"):
        train_decoder(bad, cfg, lm, tmp_path / "r", epochs=1)
