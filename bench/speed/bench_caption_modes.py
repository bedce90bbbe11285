"""Clips per second of `audiocap caption` in each mode, on real clips, with ratios in one run.

    .venv/bin/python bench/speed/bench_caption_modes.py [-m MODEL] [--sets real,10s]
        [--limit N] [--modes full,fast,features] [--work DIR]

Needs ../shared/data/sounds. Two input sets:

* ``real``: every readable clip under ../shared/data/sounds (0.2-10 s, mostly short);
* ``10s``: 10 s clips made from them (each clip tiled to 10 s, 16 kHz mono WAV, written under
  ``--work``, never into the repository), the length AudioCaps clips have.

Modes, each a child process (its own peak RSS, from os.wait4) with an empty feature cache:

* ``full``: the model as `caption` runs it (decoder, beam 4);
* ``fast``: `caption --fast` (the retrieved pool's consensus caption, no decoder);
* ``features``: decoding, resampling and the encoder alone (`FeatureCache.get_many`), the floor
  under every mode.

The model's index and the converted LM are built once, before the timed runs, and shared by
every child through links in its cache, so no run pays a first use. Ratios are against ``full``
in the same run. A bfloat16 or int8 decoder is not measured: none ships (a decoder must be
trained on the LM features it is given; see docs/experiments.md, "A lower-precision frozen LM").
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from _fixtures import run_child

ROOT = Path(__file__).resolve().parents[2]
SOUNDS = ROOT / ".." / "shared" / "data" / "sounds"
SR = 16000
FEATURES = """
import sys
from audiocap_cli.pipeline.captioner import CaptionOptions, Captioner
from audiocap_cli.pipeline.registry import resolve
paths = sys.argv[2:]
cap = Captioner(resolve(sys.argv[1] or None), CaptionOptions(fast=True))
feats = cap.cache.get_many(paths, cap.encoder, cap.policy, batch_size=16)
print(sum(1 for f in feats if not isinstance(f, Exception)))
"""


def real_clips(limit: int | None) -> list[Path]:
    """The readable clips under ../shared/data/sounds, sorted."""
    from audiocap_cli.audio.io import AUDIO_EXTENSIONS

    clips = sorted(p for p in SOUNDS.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    return clips[:limit] if limit else clips


def ten_second_clips(clips: list[Path], folder: Path) -> list[Path]:
    """Each readable clip tiled to 10 s at 16 kHz mono, as WAV files in ``folder``."""
    from audiocap_cli.audio.io import load
    from audiocap_cli.errors import AudioError

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, clip in enumerate(clips):
        try:
            wave = load(clip, SR)
        except AudioError:
            continue
        tiled = np.resize(wave, 10 * SR).astype(np.float32)  # repeats the clip to 10 s
        path = folder / f"{i:04d}_{clip.stem[:40]}.wav"
        sf.write(path, tiled, SR)
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-m", "--model", default="", help="model name or folder (default: the default)")
    ap.add_argument("--sets", default="real,10s")
    ap.add_argument("--modes", default="full,fast,features")
    ap.add_argument("--limit", type=int, default=None, help="first N clips of each set")
    ap.add_argument("--work", type=Path, default=None, help="folder for clips and caches")
    a = ap.parse_args()
    if not SOUNDS.is_dir():
        sys.exit(f"{SOUNDS}: development data not found; this benchmark needs ../shared/data")
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_caption_modes."))
    model = ["-m", a.model] if a.model else []
    warm = work / "warm-cache"
    env = {**os.environ, "AUDIOCAP_CACHE": str(warm)}
    # first use: the model's index and the converted LM, outside the timed runs
    code, wall, _, _, err = run_child(
        [sys.executable, "-m", "audiocap_cli", "caption", str(real_clips(1)[0]), *model, "-q"],
        env,
    )
    if code != 0:
        sys.exit(f"warm-up failed: {err.strip().splitlines()[-1:]}")
    print(f"# warm-up (index, LM) {wall:.0f} s; work folder {work}", file=sys.stderr)
    sets = {}
    for name in a.sets.split(","):
        clips = real_clips(a.limit)
        sets[name] = clips if name == "real" else ten_second_clips(clips, work / "clips10")
    print("| set | clips | mode | wall s | clips/s | x full | peak RSS GB |")
    print("|---|---|---|---|---|---|---|")
    for name, clips in sets.items():
        paths = [str(p) for p in clips]
        base = None
        for mode in a.modes.split(","):
            cache = Path(tempfile.mkdtemp(prefix="cache.", dir=work))  # features computed
            for sub in ("lm", "models"):
                if (warm / sub).exists():
                    (cache / sub).symlink_to(warm / sub, target_is_directory=True)
            child_env = {**env, "AUDIOCAP_CACHE": str(cache)}
            if mode == "features":
                args = [sys.executable, "-c", FEATURES, a.model, *paths]
            else:
                out = cache / "out.jsonl"
                args = [sys.executable, "-m", "audiocap_cli", "caption", *paths, *model, "-q"]
                args += ["-o", str(out)] + (["--fast"] if mode == "fast" else [])
            code, wall, rss, _, err = run_child(args, child_env)
            if code not in (0, 1):
                sys.exit(f"{name} {mode}: exit {code}: {err.strip().splitlines()[-1:]}")
            rate = len(paths) / wall
            base = rate if mode == "full" else base
            ratio = f"{rate / base:.1f}" if base else ""
            print(
                f"| {name} | {len(paths)} | {mode} | {wall:.1f} | {rate:.2f} | {ratio} | "
                f"{rss / 2**30:.2f} |",
                flush=True,
            )
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
