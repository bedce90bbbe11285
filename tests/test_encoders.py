"""Tests of audiocap_cli.audio.encoders: YAMNet port vs the original TF model, VGGish shapes/loading."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audiocap_cli.audio.encoders import AudioEncoder, EncoderConfig, load_encoder
from audiocap_cli.audio.encoders.frontend import mel_matrix
from audiocap_cli.audio.encoders.tfcheckpoint import read_checkpoint
from audiocap_cli.audio.encoders.vggish import VGGISH_CONFIG, VGGish, load_vggish
from audiocap_cli.audio.encoders.yamnet import YAMNET_CONFIG, SamePad, YAMNet, load_yamnet
from audiocap_cli.config import file_sha256, fingerprint, load_config, save_config
from audiocap_cli.errors import ModelNotFoundError
from audiocap_cli.resources import shipped

FIXTURE = Path(__file__).parent / "fixtures" / "yamnet_reference.json"
SOUNDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sounds"
SR = 16000


def _reference_script() -> ModuleType:
    """scripts/make_yamnet_reference.py (numpy-only at import), for its exact inputs."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "make_yamnet_reference.py"
    spec = importlib.util.spec_from_file_location("make_yamnet_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_input = _reference_script().make_input


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOCAP_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def yamnet() -> YAMNet:
    return load_encoder("yamnet")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text())


def _rescale(model: torch.nn.Module, seed: int) -> None:
    """He-normal conv/linear weights: torch's default init shrinks activations layer by layer
    into float denormals, which makes a deep random net very slow on CPU."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.01, generator=gen)


def random_yamnet(seed: int = 0) -> YAMNet:
    model = YAMNet()
    _rescale(model, seed)
    return model.freeze()


@pytest.fixture(scope="module")
def vggish() -> VGGish:
    model = VGGish(init_weights=False)  # _rescale initialises every weight
    _rescale(model, 0)
    return model.freeze()


# ---- front end -----------------------------------------------------------------------------
def test_mel_matrix_matches_tf_signal(reference: dict) -> None:
    ours = mel_matrix(64, 257, 16000, 125.0, 7500.0)
    assert list(ours.shape) == reference["mel_matrix_shape"]
    assert np.all(ours[0] == 0.0), "the DC bin must carry no weight"
    # tf.signal builds it in float32, we in float64: weights agree to float32 round-off.
    np.testing.assert_allclose(ours.sum(0), reference["mel_matrix_colsum"], rtol=1e-5)
    for row, values in reference["mel_matrix_rows"].items():
        np.testing.assert_allclose(ours[int(row)], values, atol=1e-5)


@pytest.mark.parametrize(
    ("seconds", "yamnet_t", "vggish_t"),
    [
        (10.0, 20, 10),
        (0.0, 1, 1),
        (0.5, 1, 1),
        (0.975, 1, 1),
        (0.976, 2, 1),
        (1.455, 2, 1),
        (1.456, 3, 1),
        (1.935, 3, 2),
        (3.0, 6, 3),
    ],
)
def test_num_frames(seconds: float, yamnet_t: int, vggish_t: int) -> None:
    assert AudioEncoder(YAMNET_CONFIG).num_frames(seconds) == yamnet_t
    assert AudioEncoder(VGGISH_CONFIG).num_frames(seconds) == vggish_t


def test_encode_length_matches_num_frames() -> None:
    model = random_yamnet()
    for n in (1, 15600, 15601, 23280, 23281, 48000):
        out = model.encode(torch.zeros(1, n))
        assert out.frames.shape[1] == model.num_frames(n / SR), n


def test_silence_log_mel_is_log_offset() -> None:
    for model, offset in ((YAMNet(), 0.001), (VGGish.__new__(VGGish), 0.01)):
        if isinstance(model, VGGish):  # only the front end is needed: skip the 72 M weights
            AudioEncoder.__init__(model, VGGISH_CONFIG)
        patches = model.log_mel_patches(torch.zeros(2, 20000))
        assert torch.allclose(patches, torch.full_like(patches, math.log(offset)))


@pytest.mark.parametrize("size", [8, 9])
def test_same_pad_is_tensorflow_same(size: int) -> None:
    # TF 'SAME' stride 2 == stride-1 'SAME' conv subsampled at odd (even size) or even
    # (odd size) positions: the extra pad pixel sits at the end, not the start.
    torch.manual_seed(0)
    x, w = torch.randn(2, 3, size, size), torch.randn(3, 1, 3, 3)
    ours = F.conv2d(SamePad(3, 2)(x), w, stride=2, groups=3)
    full = F.conv2d(x, w, padding=1, groups=3)
    start = 1 if size % 2 == 0 else 0
    assert torch.allclose(ours, full[:, :, start::2, start::2], atol=1e-6)
    assert ours.shape[-1] == math.ceil(size / 2)


# ---- interface on a random model (fast) ----------------------------------------------------
def test_batching_and_chunking_do_not_change_outputs() -> None:
    model = random_yamnet()
    waves = torch.randn(3, 24000) * 0.1
    full = model.encode(waves)
    assert full.frames.shape == (3, 3, 1024) and full.scores is not None
    assert full.scores.shape == (3, 3, 521)
    single = model.encode(waves[1].numpy())  # [N] numpy is taken as one clip
    assert torch.allclose(full.frames[1], single.frames[0], atol=1e-5)
    model.chunk_patches = 2  # one clip per step, fewer patches than a clip has
    assert torch.allclose(model.encode(waves).frames, full.frames, atol=1e-5)
    assert torch.all((full.scores >= 0) & (full.scores <= 1))


def test_encode_rejects_bad_shape_and_handles_empty_batch() -> None:
    model = random_yamnet()
    with pytest.raises(ValueError):
        model.encode(torch.zeros(1, 1, 16000))
    out = model.encode(torch.zeros(0, 16000))
    assert out.frames.shape == (0, 2, 1024)


def test_vggish_random_shapes(vggish: VGGish) -> None:
    out = vggish.encode(torch.randn(2, 3 * SR) * 0.1)
    assert out.frames.shape == (2, 3, 128) and out.scores is None
    assert vggish.dim == 128 and vggish.hop_seconds == pytest.approx(0.96)
    assert not any(p.requires_grad for p in vggish.parameters())
    assert vggish.class_names() == []
    assert out.frames.abs().sum() > 0 and torch.all(out.frames >= 0)  # after the last ReLU


def test_vggish_state_dict_layout(vggish: VGGish) -> None:
    state = {f"module.{k}": v.clone() for k, v in vggish.state_dict().items()}
    state["pproc._pca_means"] = torch.zeros(128, 1)  # torchvggish's PCA: ignored
    dst = copy.deepcopy(vggish)
    with torch.no_grad():
        for p in dst.parameters():
            p.zero_()
    dst.load_torchvggish(state, "test")
    waves = torch.randn(1, 2 * SR) * 0.1
    assert torch.equal(vggish.encode(waves).frames, dst.encode(waves).frames)
    del state["module.embeddings.4.weight"]
    state["module.features.0.bias"] = torch.zeros(3)
    with pytest.raises(
        ModelNotFoundError, match="missing: embeddings.4.weight; wrong shape: features.0.bias"
    ):
        dst.load_torchvggish(state, "test")


def test_load_vggish_from_file(vggish: VGGish, tmp_path: Path) -> None:
    # A real-layout state dict kept tiny on disk: each tensor is a random row broadcast
    # (stride 0) to its full shape, and torch.save stores only the row.
    gen = torch.Generator().manual_seed(1)
    state = {
        k: (
            torch.randn(v.shape[0], *([1] * (v.ndim - 1)), generator=gen) / math.sqrt(v[0].numel())
        ).expand_as(v)
        for k, v in vggish.state_dict().items()
    }
    path = tmp_path / "vggish-tiny.pth"
    torch.save(state, path)
    assert path.stat().st_size < 1_000_000
    model = load_encoder("vggish", weights=str(path))
    assert isinstance(model, VGGish) and model.config.weights == file_sha256(path)[:16]
    assert not model.training and model.config.name == "vggish" and model.config.dim == 128
    ref = copy.deepcopy(vggish)
    ref.load_torchvggish(state, "in memory")
    waves = torch.randn(2, 2 * SR) * 0.1
    assert torch.allclose(model.encode(waves).frames, ref.encode(waves).frames, atol=1e-5)


def test_vggish_weight_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not shipped"):
        load_encoder("vggish")
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_encoder("vggish", weights=str(tmp_path / "nope.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a torch file")
    with pytest.raises(ModelNotFoundError, match="unreadable"):
        load_vggish(junk)
    small = tmp_path / "small.pth"
    torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3)}, small)
    with pytest.raises(ModelNotFoundError, match="not a torchvggish state dict"):
        load_vggish(small)


def test_unknown_encoder_and_bad_yamnet_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="unknown encoder"):
        load_encoder("wav2vec")
    with pytest.raises(ModelNotFoundError, match="no YAMNet checkpoint"):
        load_encoder("yamnet", weights=str(tmp_path))
    (tmp_path / "variables").mkdir()
    (tmp_path / "variables" / "variables.index").write_bytes(b"\0" * 100)
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "yamnet_class_map.csv").write_text("index,mid,display_name\n0,/m/x,X\n")
    with pytest.raises(ModelNotFoundError, match="not a TensorFlow checkpoint"):
        load_encoder("yamnet", weights=str(tmp_path))


@pytest.mark.slow
def test_truncated_checkpoint_is_a_clean_error(tmp_path: Path) -> None:
    src = shipped("yamnet")
    (tmp_path / "variables").mkdir()
    (tmp_path / "variables" / "variables.index").write_bytes(
        (src / "variables" / "variables.index").read_bytes()
    )
    data = (src / "variables" / "variables.data-00000-of-00001").read_bytes()
    (tmp_path / "variables" / "variables.data-00000-of-00001").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelNotFoundError, match="corrupt TensorFlow checkpoint"):
        read_checkpoint(tmp_path / "variables" / "variables")


# ---- shipped weights -------------------------------------------------------------------------
@pytest.mark.slow
def test_checkpoint_reader_on_shipped_weights() -> None:
    variables = read_checkpoint(shipped("yamnet") / "variables" / "variables")
    prefix = "layer-1/layer/_func/_yamnet/layer_with_weights-"
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    assert variables[f"{prefix}0/kernel{suffix}"].shape == (3, 3, 1, 32)
    assert variables[f"{prefix}2/depthwise_kernel{suffix}"].shape == (3, 3, 32, 1)
    assert variables[f"{prefix}54/kernel{suffix}"].shape == (1024, 521)
    assert variables[f"{prefix}54/bias{suffix}"].dtype == np.float32
    var = variables[f"{prefix}1/moving_variance{suffix}"]
    assert np.all(var > 0) and np.all(np.isfinite(var))


@pytest.mark.slow
def test_yamnet_interface(yamnet: YAMNet, tmp_path: Path) -> None:
    assert (yamnet.dim, yamnet.sample_rate, yamnet.hop_seconds) == (1024, 16000, 0.48)
    assert not yamnet.training and not any(p.requires_grad for p in yamnet.parameters())
    names = yamnet.class_names()
    assert len(names) == 521 and names[0] == "Speech" and names[494] == "Silence"
    assert len(yamnet.config.weights) == 16
    save_config(yamnet.config, tmp_path / "encoder.json")
    assert load_config(EncoderConfig, tmp_path / "encoder.json") == yamnet.config
    assert fingerprint(load_encoder("yamnet").config) == fingerprint(yamnet.config)


@pytest.mark.slow
def test_fused_channels_last_equals_plain(yamnet: YAMNet) -> None:
    plain = load_yamnet(shipped("yamnet"), fused=False, channels_last=False)
    waves = torch.from_numpy(make_input({"kind": "noise", "seconds": 2.0, "seed": 3, "amp": 0.1}))[
        None
    ]
    a, b = yamnet.encode(waves), plain.encode(waves)
    assert torch.allclose(a.frames, b.frames, atol=1e-4)
    assert a.scores is not None and b.scores is not None
    assert torch.allclose(a.scores, b.scores, atol=1e-5)


@pytest.mark.slow
def test_matches_original_tensorflow_yamnet(yamnet: YAMNet, reference: dict) -> None:
    """Outputs of TF-Hub yamnet/1 (scripts/make_yamnet_reference.py).

    Tolerances: 1e-4 absolute; the tone case gets 2e-3 on log-mel and 5e-4 on embeddings:
    its quiet bins sit ~100 dB below the tone, where float32 FFT round-off (ours vs TF's,
    each as far from a float64 FFT) moves log(mel + 0.001) by up to 1e-3.
    """
    for case in reference["cases"]:
        wave = make_input(case)
        assert wave.size == case["num_samples"]
        assert float(np.sum(wave, dtype=np.float64)) == pytest.approx(case["input_sum"], abs=1e-3)
        np.testing.assert_allclose(wave[:4], case["input_head"], atol=1e-7)
        tonal = case["kind"] == "tone_chirp"
        x = torch.from_numpy(wave)[None]
        with torch.inference_mode():
            n = yamnet.padded_samples(wave.size)
            log_mel = yamnet.frontend(F.pad(x, (0, n - wave.size)))[0].numpy()
        out = yamnet.encode(x)
        assert list(log_mel.shape) == case["log_mel_shape"]
        assert list(out.frames.shape[1:]) == case["emb_shape"]
        assert out.scores is not None and list(out.scores.shape[1:]) == case["scores_shape"]
        for row, values in case["log_mel_rows"].items():
            np.testing.assert_allclose(log_mel[int(row)], values, atol=2e-3 if tonal else 1e-4)
        assert log_mel.mean() == pytest.approx(case["log_mel_mean"], abs=1e-4)
        emb, scores = out.frames[0].numpy(), out.scores[0].numpy()
        emb_atol = 5e-4 if tonal else 1e-4
        np.testing.assert_allclose(
            emb[:, : reference["emb_dims_kept"]], case["emb_head"], atol=emb_atol
        )
        np.testing.assert_allclose(
            np.linalg.norm(emb, axis=1), case["emb_norm"], atol=10 * emb_atol
        )
        np.testing.assert_allclose(scores[0], case["scores_frame0"], atol=1e-4)
        top = np.argsort(-scores.mean(0))[: len(case["top_classes"])]
        assert top.tolist() == case["top_classes"], case["name"]


# ---- real clips ------------------------------------------------------------------------------
def _load(path: Path) -> np.ndarray:
    import soundfile as sf
    from scipy.signal import resample_poly

    x, sr = sf.read(path, dtype="float32", always_2d=True)
    g = math.gcd(sr, SR)
    return resample_poly(x.mean(1), SR // g, sr // g).astype(np.float32)


@pytest.mark.slow
@pytest.mark.skipif(not SOUNDS.is_dir(), reason="../shared/data/sounds (dev data) not present")
@pytest.mark.parametrize(
    ("rel", "expected", "k"),
    [
        ("animals_cc0/dog.mp3", "Dog", 3),
        ("animals_cc0/rooster.mp3", "Chicken, rooster", 5),
        ("tau_scenes_1s/audio/street_traffic-barcelona-161-4902-9-a.wav", "Vehicle", 1),
    ],
)
def test_real_clips_get_sensible_classes(yamnet: YAMNet, rel: str, expected: str, k: int) -> None:
    out = yamnet.encode(_load(SOUNDS / rel))
    assert out.scores is not None
    names = yamnet.class_names()
    top = [names[i] for i in out.scores[0].mean(0).topk(k).indices]
    assert expected in top, f"{rel}: top {top}"
