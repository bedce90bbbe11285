"""Frozen LM loading: tiny GPT-2 (offline, fast) and the shipped SmolLM2 GGUF (slow)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from audiocap_cli.errors import ModelNotFoundError
from audiocap_cli.generation.lm import FrozenLM, _tiny_gpt2, load_lm, pad_ids


@pytest.fixture(scope="module")
def tiny() -> FrozenLM:
    return load_lm("tiny-gpt2")


def test_gpt2_bpe_tokenizer_matches_gpt2(tiny: FrozenLM) -> None:
    # reference ids from OpenAI's GPT-2 encoder (" dog" = 3290, "." = 13, <|endoftext|> = 50256)
    assert tiny.tokenize(["A dog barks."]) == [[32, 3290, 2318, 591, 13]]
    assert tiny.detokenize([32, 3290, 2318, 591, 13, 50256]) == "A dog barks."
    assert tiny.bos_id == tiny.eos_id == tiny.pad_id == 50256
    assert tiny.tokenize(["a b c d e f"], max_len=3) == [[64, 275, 269]]


def test_tiny_gpt2_shapes_and_freezing(tiny: FrozenLM) -> None:
    assert tiny.dim == 64 and tiny.vocab_size == 50257
    assert tiny.lm_head_weight.shape == (50257, 64) and tiny.lm_head_bias is None
    assert not any(p.requires_grad for p in tiny.body.parameters())
    assert not tiny.body.training
    ids = torch.tensor([[50256, 32, 3290, 2318]])
    assert tiny.features(ids).shape == (1, 4, 64)


def test_features_are_what_the_lm_head_sees(tiny: FrozenLM) -> None:
    model, _ = _tiny_gpt2()  # same seed -> same weights
    model.eval()
    ids = torch.tensor([[50256, 32, 3290, 2318, 591, 13]])
    with torch.no_grad():
        logits = model(ids).logits
    ours = tiny.features(ids) @ tiny.lm_head_weight.T
    torch.testing.assert_close(ours, logits, rtol=1e-4, atol=1e-4)


def test_padding_and_kv_cache_do_not_change_features(tiny: FrozenLM) -> None:
    seqs = [[50256, 32, 3290, 2318, 591, 13], [50256, 64]]
    ids, mask = pad_ids(seqs, tiny.pad_id)
    batched = tiny.features(ids, mask.long())
    for i, s in enumerate(seqs):
        alone = tiny.features(torch.tensor([s]))[0]
        torch.testing.assert_close(batched[i, : len(s)], alone, rtol=1e-5, atol=1e-5)
    # incremental decoding with the KV cache = one full pass
    full = tiny.features(torch.tensor([seqs[0]]))
    h, cache = tiny.step(torch.tensor([seqs[0][:3]]), None)
    steps = [h]
    for tok in seqs[0][3:]:
        h, cache = tiny.step(torch.tensor([[tok]]), cache)
        steps.append(h)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    # features_of batches by length and returns each sequence unpadded
    out = tiny.features_of(seqs)
    assert [o.shape[0] for o in out] == [6, 2]
    torch.testing.assert_close(out[1], batched[1, :2], rtol=1e-5, atol=1e-5)


def test_fingerprint_is_stable_and_tracks_weights(tiny: FrozenLM) -> None:
    again = load_lm("tiny-gpt2")
    assert again.fingerprint == tiny.fingerprint
    with torch.no_grad():
        next(again.body.parameters()).add_(1.0)
    again._fingerprint = None
    assert again.fingerprint != tiny.fingerprint


def test_missing_model_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        load_lm(str(tmp_path))  # an empty folder is not a model


# ---- the shipped SmolLM2 (slow: dequantising the GGUF takes ~30 s, in conftest.smollm2_cache) --
@pytest.fixture(scope="module")
def smollm2(smollm2_cache: Path) -> Iterator[FrozenLM]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIOCAP_CACHE", str(smollm2_cache))
        yield load_lm("smollm2")


@pytest.mark.slow
def test_smollm2_shapes_tokens_and_head(smollm2: FrozenLM, smollm2_cache: Path) -> None:
    from transformers import AutoModelForCausalLM

    assert smollm2.dim == 576 and smollm2.vocab_size == 49152
    assert (smollm2.bos_id, smollm2.eos_id) == (1, 2)  # <|im_start|>, <|im_end|>
    assert smollm2.tokenize(["A dog barks."]) == [[49, 2767, 2753, 538, 30]]
    ids = torch.tensor([[1, 49, 2767, 2753, 538, 30]])
    feats = smollm2.features(ids)
    assert feats.shape == (1, 6, 576) and torch.isfinite(feats).all()
    # body + copied head reproduce the full causal LM's logits
    folder = smollm2_cache / "lm" / "SmolLM2-135M-Instruct.Q4_1"
    full = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        logits = full(ids).logits
    torch.testing.assert_close(feats @ smollm2.lm_head_weight.T, logits, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_smollm2_cached_folder_is_reused(
    smollm2: FrozenLM, smollm2_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    converted = list((smollm2_cache / "lm").iterdir())
    assert [p.name for p in converted] == ["SmolLM2-135M-Instruct.Q4_1"]  # no temp dirs left
    assert (converted[0] / "model.safetensors").is_file()
    monkeypatch.setenv("AUDIOCAP_CACHE", str(smollm2_cache))
    # No dequantisation (~25 s): nothing is loaded from the GGUF. Checked on the calls, not on
    # the clock, which a loaded machine can stretch either way.
    sources: list[str] = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained

        def spy(source, *a, _real=real, **kw):  # type: ignore[no-untyped-def]
            sources.append(str(kw.get("gguf_file") or source))
            return _real(source, *a, **kw)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    again = load_lm("smollm2")
    assert sources and not any(s.endswith(".gguf") for s in sources), sources
    assert again.fingerprint == smollm2.fingerprint


@pytest.mark.slow
def test_smollm2_guided_decoder_and_search(smollm2: FrozenLM) -> None:
    from audiocap_cli.generation.decoder import DecoderConfig, GuidedDecoder
    from audiocap_cli.generation.decoding import DecodingOptions, decode, decode_naive

    torch.manual_seed(0)
    dec = GuidedDecoder(DecoderConfig(lm="smollm2", d_l=576, d_a=1024), smollm2).eval()
    guidance = [["A dog barks.", "A man speaks."], ["Rain falls on a roof."]]
    frames = torch.randn(2, 20, 1024)  # 10 s of YAMNet frames
    ref, pad = dec.ref_features(guidance)
    hyp = smollm2.features(torch.tensor([[1, 49, 2767], [1, 49, 2767]]))
    assert dec(hyp, ref, pad, frames).shape == (2, 3, 49152)
    opts = DecodingOptions(beam_size=2, max_len=4)
    fast = decode(dec, guidance, frames, opts)
    assert [d.tokens for d in fast] == [d.tokens for d in decode_naive(dec, guidance, frames, opts)]
    assert all(0 < len(d.tokens) <= 4 and smollm2.eos_id not in d.tokens for d in fast)
