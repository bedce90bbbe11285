"""Tests of audiocap_cli.audio.encoders.efficientat: the mn04_as port, its front end, its
strict loading, the shipped float16 weights, and the scores of the original on real clips."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from audiocap_cli.audio.encoders import ENCODERS, load_encoder
from audiocap_cli.audio.encoders import efficientat as eat
from audiocap_cli.config import fingerprint
from audiocap_cli.errors import ModelNotFoundError

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # beside the checkout
ORIGINAL = SHARED / "weights" / "efficientat" / "mn04_as_mAP_432.pt"
REFERENCE = SHARED / "weights" / "efficientat" / "reference_scores.json"
SR = 32000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shipped() -> eat.EfficientAT:
    return load_encoder("efficientat")  # type: ignore[return-value]


def _sound(seconds: float, seed: int = 0) -> np.ndarray:
    """A gliding tone under noise bursts: structured enough that the scores are not flat."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = 0.3 * np.sin(2 * np.pi * (300 + 400 * t) * t)
    bursts = 0.2 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 2 * t) > 0.5)
    return (tone + bursts).astype(np.float32)


def _script() -> ModuleType:
    path = ROOT / "scripts" / "convert_efficientat.py"
    spec = importlib.util.spec_from_file_location("convert_efficientat", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- shipped weights, shapes, registration ----------------------------------------------------


def test_shipped_encoder_shapes(shipped: eat.EfficientAT) -> None:
    assert "efficientat" in ENCODERS
    assert (shipped.dim, shipped.sample_rate, shipped.num_frames(10.0)) == (384, SR, 1)
    assert shipped.num_frames(0.5) == 1 and shipped.device == torch.device("cpu")
    assert not shipped.training and not any(p.requires_grad for p in shipped.parameters())
    waves = np.stack([_sound(10.0, 1), _sound(10.0, 2)])
    out = shipped.encode(waves)
    assert out.frames.shape == (2, 1, 384) and out.scores is not None
    assert out.scores.shape == (2, 1, 527)
    assert torch.isfinite(out.frames).all()
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    assert not torch.allclose(out.scores[0], out.scores[1])  # it hears the difference
    # [N] is one row, and the result does not depend on the batch it came in.
    alone = shipped.encode(waves[1])
    torch.testing.assert_close(alone.scores[0], out.scores[1], atol=1e-5, rtol=0)


def test_class_list_and_config(shipped: eat.EfficientAT) -> None:
    classes = eat.class_map()
    assert len(classes) == 527 and classes[0] == ("/m/09x0r", "Speech")
    assert len({mid for mid, _ in classes}) == 527
    assert shipped.class_names() == [name for _, name in classes]
    cfg = shipped.config
    assert (cfg.sample_rate, cfg.num_classes, cfg.dim) == (SR, 527, 384)
    assert len(cfg.weights) == 16  # the weights' digest keys caches and indexes
    assert fingerprint(cfg) != fingerprint(eat.EfficientATConfig())


def test_shipped_files_are_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["audiocap_cli"]
    package = ROOT / "src" / "audiocap_cli"
    for name in ("mn04_as.safetensors", "class_labels_indices.csv", "LICENSE"):
        rel = (eat.SHIPPED_DIR / name).relative_to(package).as_posix()
        assert (package / rel).is_file()
        assert any(fnmatch.fnmatch(rel, p) and rel.count("/") == p.count("/") for p in patterns)
    assert "MIT License" in (eat.SHIPPED_DIR / "LICENSE").read_text()
    assert "Florian Schmid" in (eat.SHIPPED_DIR / "LICENSE").read_text()


def test_fused_equals_unfused(shipped: eat.EfficientAT) -> None:
    plain = eat.load_efficientat(fused=False)
    x = torch.from_numpy(_sound(4.0, 3))[None]
    a, b = shipped.encode(x), plain.encode(x)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.frames, b.frames, atol=1e-4, rtol=1e-4)


# ---- padding ---------------------------------------------------------------------------------


def test_trailing_zero_padding_is_not_heard(shipped: eat.EfficientAT) -> None:
    clip = _sound(3.0, 4)
    padded = np.zeros(10 * SR, dtype=np.float32)
    padded[: len(clip)] = clip
    alone = shipped.encode(clip)
    # In a batch with a full-length row, as the pipeline's windows come.
    batch = shipped.encode(np.stack([padded, _sound(10.0, 5)]))
    assert batch.scores is not None and alone.scores is not None
    torch.testing.assert_close(batch.scores[0], alone.scores[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.frames[0], alone.frames[0], atol=1e-5, rtol=1e-5)
    # Heard with its padding, the clip scores differently: the cut is what makes them equal.
    with torch.inference_mode():
        heard = shipped.forward_rows(torch.from_numpy(padded)[None])[1]
    assert (heard - alone.scores[0]).abs().max() > 1e-3


def test_audible_lengths(shipped: eat.EfficientAT) -> None:
    n = 2 * SR
    waves = torch.zeros(4, n)
    waves[0] = 0.1  # full
    waves[1, :12345] = 0.1  # padded
    waves[2, :100] = 0.1  # shorter than the minimum: keeps min_samples, zeros included
    # waves[3]: silence
    waves[1, 5000] = 0.0  # a zero inside the audio is audio
    lengths = shipped.audible_lengths(waves)
    m = shipped.config.min_samples
    assert lengths == [n, 12345, m, m]
    assert shipped.audible_lengths(torch.zeros(1, 100)) == [100]
    out = shipped.encode(waves)
    assert out.scores is not None and torch.isfinite(out.scores).all()
    # Shorter inputs than min_samples are padded up to it (the STFT could not frame them).
    short = shipped.encode(waves[2, :100]).scores
    assert short is not None
    torch.testing.assert_close(short[0], out.scores[2], atol=1e-5, rtol=0)
    assert shipped.encode(np.zeros((1, 0), dtype=np.float32)).frames.shape == (1, 1, 384)


# ---- front end -------------------------------------------------------------------------------


def _kaldi_banks(num_bins: int, n_fft: int, sr: int, low: float, high: float) -> list[list[float]]:
    """Kaldi's MelBanks written out from its definition, one weight at a time."""

    def mel(f: float) -> float:
        return 1127.0 * math.log(1.0 + f / 700.0)

    delta = (mel(high) - mel(low)) / (num_bins + 1)
    rows = []
    for b in range(num_bins):
        left, center, right = (mel(low) + (b + i) * delta for i in range(3))
        row = []
        for k in range(n_fft // 2):
            m = mel(k * sr / n_fft)
            if left < m < right:
                row.append(
                    (m - left) / (center - left) if m <= center else (right - m) / (right - center)
                )
            else:
                row.append(0.0)
        rows.append(row + [0.0])  # the Nyquist bin: not in Kaldi's banks, padded with zero
    return rows


def test_mel_banks_match_kaldi_definition() -> None:
    ours = eat.kaldi_mel_banks(128, 1024, SR, 0.0, 15000.0)
    assert ours.shape == (128, 513) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, np.array(_kaldi_banks(128, 1024, SR, 0.0, 15000.0)), atol=1e-6)
    assert not ours[:, 0].any() and not ours[:, -1].any()  # 0 Hz and Nyquist weigh nothing
    assert not ours[:, 481:].any()  # nothing above 15000 Hz (bin 480 = 15000 Hz)
    small = eat.kaldi_mel_banks(10, 64, 8000, 100.0, 3000.0)
    np.testing.assert_allclose(
        small, np.array(_kaldi_banks(10, 64, 8000, 100.0, 3000.0)), atol=1e-6
    )


def test_front_end_matches_its_definition() -> None:
    """Pre-emphasis, centred reflect-padded frames, a symmetric 800-point Hann window placed in
    the middle of each 1024-point frame, power, mel, log, (x + 4.5) / 5: in plain numpy."""
    cfg = eat.EfficientATConfig()
    x = _sound(0.5, 6).astype(np.float64)
    y = x[1:] - 0.97 * x[:-1]
    padded = np.pad(y, 512, mode="reflect")
    frames = 1 + len(y) // 320
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(800) / 799)  # symmetric
    window = np.zeros(1024)
    window[112:912] = hann
    stft = np.stack([np.fft.rfft(padded[i * 320 : i * 320 + 1024] * window) for i in range(frames)])
    power = np.abs(stft) ** 2  # [F, 513]
    mel = power @ np.array(_kaldi_banks(128, 1024, SR, 0.0, 15000.0)).T  # [F, 128]
    expected = ((np.log(mel + 1e-5) + 4.5) / 5).T
    with torch.inference_mode():
        ours = eat.KaldiLogMel(cfg)(torch.from_numpy(x.astype(np.float32))[None])[0]
    assert ours.shape == expected.shape == (128, frames)
    np.testing.assert_allclose(ours.numpy(), expected, atol=2e-3)


# ---- loading ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return eat.read_state_dict(eat.SHIPPED_WEIGHTS)


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_strict_loading_refuses_a_wrong_state_dict(
    state: dict[str, torch.Tensor], change: str, tmp_path: Path
) -> None:
    bad = dict(state)
    if change == "missing":
        del bad["features.4.block.2.conc_se_layers.0.fc1.bias"]
    elif change == "unexpected":
        bad["classifier.7.weight"] = torch.zeros(3)
    else:
        bad["classifier.5.bias"] = torch.zeros(521)
    with pytest.raises(ModelNotFoundError) as e:
        eat.EfficientAT().load_checkpoint(bad, "bad.pt")
    message = str(e.value)
    assert "\n" not in message and "not an EfficientAT mn04_as state dict" in message
    key = {"missing": "conc_se_layers.0.fc1.bias", "unexpected": "classifier.7", "shape": "5.bias"}
    assert key[change] in message and {"shape": "wrong shape"}.get(change, change) in message
    # The same through a file, as load_encoder("efficientat", weights=...) reads it.
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    with pytest.raises(ModelNotFoundError, match="not an EfficientAT"):
        load_encoder("efficientat", weights=str(path))


def test_unreadable_weights_are_one_line_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    for path, why in [(junk, "unreadable"), (tmp_path / "none.pt", "not found")]:
        with pytest.raises(ModelNotFoundError, match=why) as e:
            eat.load_efficientat(path)
        assert "\n" not in str(e.value)
    with pytest.raises(ModelNotFoundError, match="expected a state dict"):
        torch.save([1, 2], tmp_path / "list.pt")
        eat.load_efficientat(tmp_path / "list.pt")


def test_write_safetensors_round_trip(tmp_path: Path) -> None:
    tiny = {
        "features.0.0.weight": torch.tensor([0.1, -2.5e-3, 1234.5678]),
        "features.0.1.num_batches_tracked": torch.tensor(7),
        "features.4.block.2.conc_se_layers.0.fc1.weight": torch.tensor([0.1, 3.14159]),
        "classifier.5.bias": torch.tensor([1.0 / 3.0]),
    }
    path = tmp_path / "tiny.safetensors"
    eat.write_safetensors(tiny, path)
    back = eat.read_state_dict(path)
    assert set(back) == set(tiny)
    assert back["features.0.0.weight"].dtype == torch.float32  # a conv: kept
    assert torch.equal(back["features.0.0.weight"], tiny["features.0.0.weight"])
    assert back["features.0.1.num_batches_tracked"].dtype == torch.int64
    assert int(back["features.0.1.num_batches_tracked"]) == 7
    for key in ("features.4.block.2.conc_se_layers.0.fc1.weight", "classifier.5.bias"):
        assert back[key].dtype == torch.float16
        torch.testing.assert_close(back[key].float(), tiny[key], atol=0, rtol=1e-3)


def test_converter_round_trips_a_state_dict(tmp_path: Path) -> None:
    """scripts/convert_efficientat.py on a random mn04_as: .pt -> float16 safetensors with the
    licence and class list beside it -> loads strictly, scores as the float32 model does."""
    torch.manual_seed(0)
    model = eat.EfficientAT()
    with torch.no_grad():  # non-trivial batch-norm statistics, so the copy of each is checked
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)  # type: ignore[union-attr]
                m.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
    src = tmp_path / "src" / "random.pt"
    src.parent.mkdir()
    torch.save(model.net.state_dict(), src)
    (src.parent / "LICENSE").write_text("MIT License\n")
    (src.parent / "class_labels_indices.csv").write_bytes(eat.SHIPPED_CLASSES.read_bytes())
    out = tmp_path / "out"
    dest = _script().convert(
        src, out, src.parent / "class_labels_indices.csv", src.parent / "LICENSE"
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "LICENSE",
        "class_labels_indices.csv",
        "mn04_as.safetensors",
    ]
    full, half = eat.load_efficientat(src), eat.load_efficientat(dest)
    assert full.config.weights != half.config.weights
    x = torch.from_numpy(_sound(2.0, 7))[None]
    a, b = full.encode(x), half.encode(x)
    torch.testing.assert_close(a.scores, b.scores, atol=2e-3, rtol=0)
    with pytest.raises(Exception, match="licence notice not found"):
        _script().convert(src, out, src.parent / "class_labels_indices.csv", tmp_path / "nope")


# ---- against the original --------------------------------------------------------------------


@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"no {SHARED} (the dev data)")
def test_scores_match_the_original() -> None:
    """The 12 reference clips, decoded as the reference note says (soundfile, mean of channels,
    resample_poly to 32 kHz), heard whole in one pass: top-10 scores within 1e-3 of the
    original's, for the released float32 .pt and for the shipped float16 file."""
    import soundfile as sf
    from scipy.signal import resample_poly

    ref = json.loads(REFERENCE.read_text())
    assert "resample_poly" in ref["note"] and "no padding" in ref["note"]
    mids = [mid for mid, _ in eat.class_map()]
    models = {"original .pt": eat.load_efficientat(ORIGINAL), "shipped": eat.load_efficientat()}
    worst = dict.fromkeys(models, 0.0)
    for clip, top in ref["clips"].items():
        x, sr = sf.read(SHARED / "sounds" / clip, dtype="float32", always_2d=True)
        g = math.gcd(sr, SR)
        wave = torch.from_numpy(resample_poly(x.mean(1), SR // g, sr // g).astype(np.float32))
        idx = [mids.index(mid) for mid, _, _ in top]
        want = torch.tensor([score for _, _, score in top])
        for name, m in models.items():
            if wave[-1] != 0:  # as the pipeline runs it (encode cuts only trailing zeros)
                out = m.encode(wave).scores
                assert out is not None
                got = out[0, 0, idx]
            else:  # the clip ends in digital silence, which the reference heard: run it whole
                with torch.inference_mode():
                    got = m.forward_rows(wave[None])[1][0, idx]
            worst[name] = max(worst[name], (got - want).abs().max().item())
    assert worst["original .pt"] < 1e-3 and worst["shipped"] < 1e-3, worst
