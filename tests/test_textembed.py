"""textembed: sentence-transformers-exact MiniLM embeddings, batching and the on-disk cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from audiocap_cli.errors import ConfigMismatchError, ModelNotFoundError
from audiocap_cli.text import embed as textembed
from audiocap_cli.text.embed import SentenceEncoder, encode_cached

# Reference: sentence-transformers 6.2.0 SentenceTransformer(<shipped minilm>).encode(TEXTS)
# (first 8 dims, and the cosine matrix), run once on CPU.
TEXTS = [
    "A dog barks.",
    "A man is speaking while water runs in the background",
    "The sound of a car engine idling",
    "rain " * 300,  # longer than max_seq_length=256: truncated as sentence-transformers does
]
REF_HEAD = np.array(
    [
        [0.042563, -0.032189, 0.051967, 0.099438, 0.017733, -0.007869, 0.042398, -0.104537],
        [0.025554, 0.01441, -0.009955, -0.048563, -0.019976, -0.023101, 0.043447, -0.048373],
        [-0.078196, -0.007349, -0.010207, 0.030228, -0.017802, 0.013353, 0.058844, -0.040886],
        [-0.073228, -0.008901, 0.05755, -0.022872, 0.002582, -0.004956, 0.040562, -0.084939],
    ]
)
REF_COS_01, REF_COS_02, REF_COS_12 = 0.08520354, 0.2732606, 0.19003232


def _tiny_model(folder: Path, pooling: dict | None = None) -> Path:
    """A 2-layer random BERT with a word-level tokenizer, saved as a sentence-transformers folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "a",
        "dog",
        "barks",
        "cat",
        "meows",
        "loud",
        "rain",
    ]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(cfg).eval().save_pretrained(folder)
    fast.save_pretrained(folder)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8}))
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                },
            ]
        )
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(
            pooling
            or {
                "word_embedding_dimension": 16,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
            }
        )
    )
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SentenceEncoder:
    return SentenceEncoder(str(_tiny_model(tmp_path_factory.mktemp("tiny"))))


def _manual(enc: SentenceEncoder, text: str) -> np.ndarray:
    """One text alone, no padding: mean of the hidden states, normalised."""
    ids = enc.tokenizer(
        text, truncation=True, max_length=enc.config.max_seq_length, return_tensors="pt"
    )["input_ids"]
    with torch.no_grad():
        h = enc.model(input_ids=ids).last_hidden_state[0]
    v = h.mean(0)
    return (v / v.norm()).numpy()


def test_tiny_shapes_order_and_padding_invariance(tiny: SentenceEncoder) -> None:
    texts = ["a dog barks", "cat", "a loud cat meows a dog barks rain rain rain", "rain"]
    out = tiny.encode(texts, batch_size=3)
    assert out.shape == (4, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    # length-sorted batches with padding give what each text gives alone, in input order
    for i, t in enumerate(texts):
        np.testing.assert_allclose(out[i], _manual(tiny, t), atol=1e-5)
    np.testing.assert_allclose(tiny.encode(texts, batch_size=1), out, atol=1e-5)


def test_truncation_and_empty_inputs(tiny: SentenceEncoder) -> None:
    assert tiny.config.max_seq_length == 8
    long = " ".join(["dog"] * 50)
    np.testing.assert_allclose(
        tiny.encode([long])[0], tiny.encode([" ".join(["dog"] * 6)])[0], atol=1e-5
    )
    assert tiny.encode([]).shape == (0, 16)
    progress: list[int] = []
    tiny.encode(["a", "dog", "cat"], batch_size=2, progress=progress.append)
    assert sum(progress) == 3


def test_cache_round_trip_and_key(
    tiny: SentenceEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIOCAP_CACHE", str(tmp_path))
    texts = ["a dog barks", "a cat meows"]
    first = encode_cached(tiny, texts)
    files = list((tmp_path / "text_vectors").glob("*.npy"))
    assert len(files) == 1 and files[0].name.startswith(tiny.fingerprint)
    calls: list[int] = []
    monkeypatch.setattr(
        tiny, "encode", lambda *a, **k: calls.append(1) or np.zeros((2, 16), np.float32)
    )
    np.testing.assert_array_equal(encode_cached(tiny, texts), first)  # served from disk
    assert not calls
    encode_cached(tiny, texts[::-1])  # another list is another key
    assert calls == [1]


def test_bad_model_and_pooling(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        SentenceEncoder(str(tmp_path / "nowhere"))
    folder = _tiny_model(
        tmp_path / "cls",
        pooling={"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
    )
    with pytest.raises(ConfigMismatchError, match="pooling"):
        SentenceEncoder(str(folder))


def test_fingerprint_tracks_weights(tmp_path: Path) -> None:
    a = textembed._weights_id(_tiny_model(tmp_path / "a"))
    torch.manual_seed(1)
    b_dir = _tiny_model(tmp_path / "b")
    from transformers import BertModel

    m = BertModel.from_pretrained(b_dir)
    with torch.no_grad():
        m.embeddings.word_embeddings.weight.add_(1.0)
    m.save_pretrained(b_dir)
    assert textembed._weights_id(b_dir) != a


@pytest.mark.slow
def test_shipped_minilm_matches_sentence_transformers() -> None:
    enc = SentenceEncoder("minilm")
    assert enc.config.dim == 384 and enc.config.max_seq_length == 256
    out = enc.encode(TEXTS, batch_size=2)
    np.testing.assert_allclose(out[:, :8], REF_HEAD, atol=2e-5)
    cos = out @ out.T
    np.testing.assert_allclose(
        [cos[0, 1], cos[0, 2], cos[1, 2]], [REF_COS_01, REF_COS_02, REF_COS_12], atol=2e-5
    )
