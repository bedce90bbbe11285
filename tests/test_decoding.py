"""Beam search with KV cache: greedy equivalence, agreement with the naive search, overfitting."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _shared import D_A, make_decoder

from audiocap_cli.errors import AudiocapError
from audiocap_cli.generation.decoder import (
    DecoderConfig,
    GuidedDecoder,
    export_float16,
    load_decoder,
)
from audiocap_cli.generation.decoding import (
    DecodingOptions,
    _Beams,
    _word_ends,
    decode,
    decode_naive,
)
from audiocap_cli.generation.lm import FrozenLM
from audiocap_cli.training.decoder import DecoderTrainConfig, train_decoder
from audiocap_cli.training.grounded import vocabulary

GUIDANCE = [
    ["a dog barks", "a cat meows loudly"],
    ["rain falls on a roof"],
    [],
    ["birds chirp", "wind blows", "a car passes by quickly"],
]


make = make_decoder


def frames(n: int = 4, t: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(
        np.random.default_rng(seed).standard_normal((n, t, D_A)).astype(np.float32)
    )


@torch.no_grad()
def plain_greedy(
    dec: GuidedDecoder, guidance: list[str], fr: torch.Tensor, max_len: int
) -> list[int]:
    """Argmax decoding written the obvious way: full recompute, one clip, EOS banned at step 0."""
    lm = dec.lm
    ref, pad = dec.ref_features([guidance])
    ids = [lm.bos_id]
    for t in range(max_len):
        logits = dec(lm.features(torch.tensor([ids])), ref, pad, fr[None])[0, -1]
        logp = F.log_softmax(logits, dim=-1)
        if t == 0:
            logp[lm.eos_id] = -torch.inf
        nxt = int(logp.argmax())
        if nxt == lm.eos_id:
            break
        ids.append(nxt)
    return ids[1:]


@pytest.mark.parametrize("guidance", ["concat", "separate"])
def test_beam_one_is_greedy(lm: FrozenLM, guidance: str) -> None:
    dec = make(lm, guidance=guidance)
    fr = frames()
    got = decode(
        dec,
        GUIDANCE,
        fr,
        DecodingOptions(
            beam_size=1, max_len=7, no_repeat_ngram=0, repeat_penalty=0.0, select="score"
        ),
    )  # plain argmax
    want = [plain_greedy(dec, g, fr[i], 7) for i, g in enumerate(GUIDANCE)]
    assert [list(d.tokens) for d in got] == want
    assert all(len(d.tokens) <= 7 and lm.eos_id not in d.tokens for d in got)
    assert [d.text for d in got] == [lm.detokenize(w) for w in want]


@pytest.mark.parametrize("guidance", ["concat", "separate"])
@pytest.mark.parametrize("repeat_penalty", [0.0, 1.5])
def test_cached_batched_search_equals_naive(
    lm: FrozenLM, guidance: str, repeat_penalty: float
) -> None:
    dec = make(lm, guidance=guidance)
    fr = frames()
    opts = DecodingOptions(beam_size=4, max_len=6, repeat_penalty=repeat_penalty)
    fast = decode(dec, GUIDANCE, fr, opts)
    slow = decode_naive(dec, GUIDANCE, fr, opts)
    assert [d.tokens for d in fast] == [d.tokens for d in slow]
    assert [d.score for d in fast] == pytest.approx([d.score for d in slow], abs=1e-4)
    # deterministic, and independent of how clips are chunked into batches
    again = decode(dec, GUIDANCE, fr, dataclasses.replace(opts, batch_size=3))
    assert [d.tokens for d in again] == [d.tokens for d in fast]


@pytest.mark.parametrize(("alpha", "winner"), [(None, (5, 6, 7)), (0.0, (5,)), (1.0, (5,))])
def test_length_penalty_ranks_finished_hypotheses(
    alpha: float | None, winner: tuple[int, ...]
) -> None:
    beams = _Beams(1, 2, DecodingOptions(beam_size=2, length_penalty=alpha), eos=0, suppress=[])
    # sum log p -2 over 2 tokens vs -3 over 4: mean prefers the longer, raw sum and GNMT the shorter
    beams.finished = [[(-2.0, (5, 0)), (-3.0, (5, 6, 7, 0))]]
    (best,) = beams.results(lambda toks: " ".join(map(str, toks)))
    assert best.tokens == winner and best.text == " ".join(map(str, winner))
    assert best.hypotheses[0].tokens == best.tokens and len(best.hypotheses) == 2


def test_choose_picks_the_hypothesis_closest_to_the_evidence() -> None:
    from audiocap_cli.generation.decoding import Decoded, choose

    hyps = tuple(
        Decoded(t, -1.0 - i, -3.0 - i, (i,))
        for i, t in enumerate(("a man speaks", "a dog barks loudly", "rain falls"))
    )
    d = Decoded(hyps[0].text, -1.0, -3.0, (0,), hyps)
    guid = ["a dog barks", "dogs bark loudly nearby", "a dog barks and growls"]
    ev = (guid, [1.0] * 3)
    single = Decoded("x", 0.0, 0.0, (4,))
    got = choose([d, d, dataclasses.replace(single, hypotheses=(single,))], [ev, ([], []), ev])
    assert got[0].text == "a dog barks loudly" and got[0].hypotheses == hyps
    assert (got[0].score, got[0].tokens) == (
        -2.0,
        (1,),
    )  # the chosen hypothesis's own score and tokens
    assert got[1] is d and got[2].text == "x"  # no evidence, or a single hypothesis: unchanged
    # evidence weights decide: the rain caption weighs 10x the dog ones
    rain = (["rain falls", "a dog barks", "a dog barks loudly"], [10.0, 1.0, 1.0])
    assert choose([d], [rain])[0].text == "rain falls"
    with pytest.raises(AudiocapError, match="select"):
        DecodingOptions(select="best")
    with pytest.raises(AudiocapError, match="recall_weight"):
        DecodingOptions(recall_weight=-1.0)
    with pytest.raises(AudiocapError, match="pool_margin"):
        DecodingOptions(pool_margin=-0.1)


def test_select_mbr_recall_weight_favours_covering_the_evidence() -> None:
    """The F-mean term prefers the hypothesis that mentions more of what the evidence says,
    where CIDEr-D alone prefers the short, common phrase."""
    from audiocap_cli.text.agreement import select_mbr, unigram_fmean

    texts = ("dog barking", "a dog barks and a man talks nearby")
    ev = (
        [
            "dog barking loudly",
            "a dog barking",
            "dog barking and a man talking",
            "a man talks as a dog barks",
        ],
        [1.0] * 4,
    )
    assert select_mbr([texts], [ev], 0.0) == [0]
    assert select_mbr([texts], [ev], 10.0) == [1]
    # METEOR's F-mean, alpha 0.85: 2 matches, P 1, R 2/3 -> (2/3) / (0.85 + 0.15 * 2/3)
    assert unigram_fmean([["a", "dog"]], [["a", "dog", "barks"], ["cat"]])[0] == pytest.approx(
        [(2 / 3) / 0.95, 0.0]
    )
    # a word no reference has still counts in the hypothesis length: P = R = 2/3
    assert unigram_fmean([["a", "dog", "howls"]], [["a", "dog", "barks"]])[0, 0] == pytest.approx(
        2 / 3
    )


def test_pool_margin_prints_the_pools_own_caption_only_when_it_agrees_more_by_the_margin() -> None:
    """The evidence's caption of highest leave-one-out agreement replaces the chosen hypothesis
    exactly when it beats the hypothesis' agreement by more than the margin."""
    from audiocap_cli.generation.decoding import Decoded, choose
    from audiocap_cli.text.agreement import ciderd_agreement, ciderd_consensus, unigram_fmean, words

    hyps = tuple(
        Decoded(t, -1.0 - i, -3.0 - i, (i,)) for i, t in enumerate(("a man speaks", "a dog growls"))
    )
    d = Decoded(hyps[0].text, -1.0, -3.0, (0,), hyps)
    pool = ["a dog barks", "a dog barks", "a dog barks loudly", "a man speaks", "wind blows"]
    w = [1.0, 1.0, 1.0, 1.0, 0.0]  # a zero-weight caption is never printed
    rw = 3.0
    hyp_u = ciderd_agreement([h.text for h in hyps], pool, w, None) + rw * np.average(
        unigram_fmean([words(h.text) for h in hyps], [words(p) for p in pool]), axis=1, weights=w
    )
    own = ciderd_consensus([pool], [w], None, rw)[0]
    gap = own[:4].max() - hyp_u.max()
    assert gap > 0 and pool[int(np.argmax(own[:4]))] == "a dog barks"
    chosen = hyps[int(np.argmax(hyp_u))]
    for margin, text in (
        (gap - 1e-6, "a dog barks"),
        (gap + 1e-6, chosen.text),
        (math.inf, chosen.text),
    ):
        (got,) = choose([d], [(pool, w)], rw, None, margin)
        assert got.text == text and got.hypotheses == hyps
    (got,) = choose([d], [(pool, w)], rw, None, 0.0)
    assert (
        got.retrieved and got.tokens == () and np.isnan(got.score)
    )  # not a hypothesis of the decoder
    assert not choose([d], [(pool, w)], rw, None, 100.0)[0].retrieved
    single = Decoded("a man speaks", -1.0, -3.0, (0,))  # one hypothesis: compared all the same
    assert choose([single], [(pool, w)], rw, None, 0.0)[0].text == "a dog barks"
    assert choose([single], [(pool, w)], rw, None, math.inf)[0] is single


def test_consensus_selection_in_decode_uses_the_evidence(lm: FrozenLM) -> None:
    """decode(select="consensus") chooses among the beam's hypotheses with the given evidence
    (and the guidance, equally weighted, when there is none)."""
    from audiocap_cli.generation.decoding import choose

    dec = make(lm)
    fr = frames(2, 6)
    plain = decode(dec, GUIDANCE[:2], fr, DecodingOptions(beam_size=3, max_len=6, select="score"))
    opts = DecodingOptions(beam_size=3, max_len=6, select="consensus", pool_margin=math.inf)
    for p in plain:  # the evidence: one hypothesis, repeated: it must be picked
        assert len({h.text for h in p.hypotheses}) > 1
    ev = [([p.hypotheses[-1].text] * 3, [1.0] * 3) for p in plain]
    got = decode(dec, GUIDANCE[:2], fr, opts, evidence=ev)
    assert [g.text for g in got] == [p.hypotheses[-1].text for p in plain]
    got = decode(dec, GUIDANCE[:2], fr, opts)
    want = choose(plain, [(g, [1.0] * len(g)) for g in GUIDANCE[:2]], opts.recall_weight)
    assert [g.text for g in got] == [g.text for g in want]
    # a corpus idf given to decode reaches the CIDEr-D agreement
    idf = {"1\x00" + w: 1.0 for g in GUIDANCE[:2] for c in g for w in c.lower().split()}
    got = decode(dec, GUIDANCE[:2], fr, opts, idf=idf)
    want = choose(plain, [(g, [1.0] * len(g)) for g in GUIDANCE[:2]], opts.recall_weight, idf)
    assert [g.text for g in got] == [g.text for g in want]
    # pool_margin reaches the selection against an evidence pool: a pool of one caption said
    # twice and another said once prints the repeated one over hypotheses that say neither;
    # against the guidance (no pool given) it is not applied
    pool = [(["a dog barks"] * 2 + ["rain falls"], [1.0] * 3) for _ in plain]
    pm = dataclasses.replace(opts, pool_margin=0.0)
    assert [g.text for g in decode(dec, GUIDANCE[:2], fr, pm, evidence=pool)] == ["a dog barks"] * 2
    assert [g.text for g in decode(dec, GUIDANCE[:2], fr, pm)] == [
        g.text
        for g in choose(plain, [(g, [1.0] * len(g)) for g in GUIDANCE[:2]], opts.recall_weight)
    ]


def test_ragged_frames_and_errors(lm: FrozenLM) -> None:
    dec = make(lm)
    fr = frames(2, 6)
    ragged = [fr[0].numpy(), fr[1, :3].numpy()]
    opts = DecodingOptions(beam_size=2, max_len=5)
    got = decode(dec, GUIDANCE[:2], ragged, opts)
    assert got[0].tokens == decode(dec, GUIDANCE[:1], fr[:1], opts)[0].tokens
    assert got[1].tokens == decode(dec, GUIDANCE[1:2], fr[1:2, :3], opts)[0].tokens
    with pytest.raises(AudiocapError, match="clips"):
        decode(dec, GUIDANCE, fr, opts)  # 4 guidance lists, 2 clips of frames
    with pytest.raises(AudiocapError, match="beam_size"):
        DecodingOptions(beam_size=0)


@pytest.mark.slow
def test_overfit_decoder_reproduces_its_captions(lm: FrozenLM, tmp_path: Path) -> None:
    """The decoder as `bootstrap` trains and ships it (low-rank head over the captions' tokens,
    residual LM features, separate guidance) learns four captions by heart: from random weights
    over a random LM, only a decoder that trained reproduces them token for token."""
    caps = [
        "a dog barks twice",
        "rain falls on a tin roof",
        "a man speaks while birds chirp",
        "people clap and cheer",
    ]
    rng = np.random.default_rng(0)
    ex = [(c, [c], rng.standard_normal((5, D_A)).astype(np.float32)) for c in caps]
    cfg = DecoderConfig(
        lm="tiny-gpt2",
        d_l=64,
        d_a=D_A,
        k=1,
        dropout=0.0,
        label_smoothing=0.0,
        head="lowrank",
        residual=True,
        guidance="separate",
    )
    # Each example 30 times per epoch: 2 epochs of 30 steps of 4 at a constant 1e-2 (a checkpoint
    # per epoch costs more than a step). The full head over GPT-2's 50k tokens, without the
    # residual, needs several times the steps and still stalls on some seeds.
    tc = DecoderTrainConfig(batch_size=4, micro_batch=4, lr_max=1e-2, lr_min=1e-2)
    vocab = vocabulary(lm, caps, cfg.max_len)
    run = train_decoder(ex * 30, cfg, lm, tmp_path / "run", epochs=2, train_cfg=tc, vocab_ids=vocab)
    dec = load_decoder(run, lm)
    opts = DecodingOptions(beam_size=3, select="score", repeat_penalty=0.0)
    out = decode(dec, [[c] for c in caps], [e[2] for e in ex], opts)
    assert [d.text for d in out] == caps


def test_no_repeat_ngram_blocks_exactly_the_repeating_tokens() -> None:
    beams = _Beams(1, 2, DecodingOptions(beam_size=2, no_repeat_ngram=3), eos=0, suppress=[])
    beams.seqs = torch.tensor([[5, 6, 7, 5, 6], [5, 6, 7, 8, 9]])
    logp = torch.zeros(2, 10)
    beams._block_repeats(logp)
    assert torch.isinf(logp[0, 7]) and torch.isfinite(logp[0]).sum() == 9  # "5 6 7" may not recur
    assert torch.isfinite(logp[1]).all()  # "8 9" never seen before: nothing banned
    off = _Beams(1, 2, DecodingOptions(beam_size=2, no_repeat_ngram=0), eos=0, suppress=[])
    off.seqs = beams.seqs.clone()
    logp = torch.zeros(2, 10)
    off._block_repeats(logp)
    assert torch.isfinite(logp).all()


def test_repeat_penalty_hits_a_content_word_said_again_when_it_ends() -> None:
    texts = [
        "",
        "A",
        " man",
        " speaks",
        " and",
        " a",
        " wo",
        "man",
        ",",
        " dog",
        "s",
        "D",
        "ucks",
        " ducks",
    ]
    lm = type(
        "LM",
        (),
        {
            "token_texts": lambda self, ids: dict(enumerate(texts)),
            "eos_id": 0,
            "vocab_size": len(texts),
        },
    )()
    fake = type("Decoder", (), {"lm": lm, "vocab_ids": None})()
    opts = DecodingOptions(beam_size=4, repeat_penalty=2.0)
    beams = _Beams(1, 4, opts, eos=0, suppress=[], words=_word_ends(fake, opts))
    ends = [0, 2, 3, 4, 5, 6, 8, 9, 13]  # tokens that close the word before them (EOS included)
    assert sorted(beams.words[1].tolist()) == ends
    beams.seqs = torch.tensor(
        [
            [1, 2, 3, 4, 5, 2],  # "A man speaks and a man": "man" again
            [1, 2, 3, 4, 5, 6],  # "A man speaks and a wo": not a word said before (yet)
            [1, 2, 4, 5, 9, 4],  # "A man and a dog and": a function word may repeat
            [
                11,
                12,
                4,
                5,
                8,
                13,
            ],  # "Ducks and a, ducks": split differently, the same word, case-blind
        ]
    )
    logp = torch.zeros(4, len(texts))
    beams._penalize_words(logp)
    for row in (0, 3):
        assert logp[row, ends].eq(-2.0).all() and logp[row].eq(0).sum() == len(texts) - len(ends)
    assert logp[1].eq(0).all() and logp[2].eq(0).all()  # "wo" + "man" = "woman" goes free
    off = _Beams(
        1,
        4,
        DecodingOptions(beam_size=4, repeat_penalty=0.0),
        eos=0,
        suppress=[],
        words=_word_ends(fake, opts),
    )
    off.seqs = beams.seqs.clone()
    logp = torch.zeros(4, len(texts))
    off._penalize_words(logp)
    assert logp.eq(0).all()


def test_token_texts_are_each_token_decoded_alone(lm: FrozenLM) -> None:
    ids = [lm.eos_id, *lm.tokenize(["a dog barks, loudly"])[0]]
    texts = lm.token_texts(ids)
    assert texts[lm.eos_id] == ""  # special tokens spell nothing
    assert "".join(texts[i] for i in ids[1:]) == "a dog barks, loudly"
    assert lm.token_texts(ids) is texts  # cached, grown in place


def test_model_dir_has_a_decoder_once_decoder_json_is_saved(lm: FrozenLM, tmp_path: Path) -> None:
    from audiocap_cli.pipeline.modeldir import ModelDir

    md = ModelDir(tmp_path / "m")
    assert not md.has_decoder()
    md.decoder.mkdir(parents=True)  # a folder without decoder.json holds no decoder
    assert not md.has_decoder()
    make(lm, guidance="separate").save(md.decoder)
    assert md.has_decoder()


def test_export_float16_halves_the_weights_and_loads_back(lm: FrozenLM, tmp_path: Path) -> None:
    dec = make(lm, guidance="separate")
    dec.save(tmp_path / "full")
    out = export_float16(tmp_path / "full", tmp_path / "half")
    from safetensors.torch import load_file

    w = load_file(str(out / "decoder.safetensors"))
    assert all(v.dtype == torch.float16 for v in w.values() if v.is_floating_point())
    back = load_decoder(out, lm)
    assert all(
        torch.equal(back.state_dict()[k], v.half().float()) for k, v in dec.state_dict().items()
    )
    assert export_float16(out, tmp_path / "again")  # an exported folder exports to the same bytes
    assert (tmp_path / "again" / "decoder.safetensors").read_bytes() == (
        out / "decoder.safetensors"
    ).read_bytes()
