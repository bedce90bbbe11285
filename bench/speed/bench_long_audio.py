"""Peak RSS of `audiocap caption` on very long recordings, --long-audio crop and windows (issue 12).

    .venv/bin/python bench/speed/bench_long_audio.py [--hours 3,10] [--modes crop,windows]
        [--rate 8000] [--format wav|flac] [--short 10] [-m MODEL] [--work DIR] [--stub-yamnet]

Each run is one `audiocap caption LONG_FILE SHORT_FILES... -m MODEL --long-audio MODE` child
process with an empty feature cache; its peak RSS is the child's own ru_maxrss (os.wait4), its
wall time the child's. Goal: <= 1.5 GB whatever the duration.

Inputs are generated, never stored: the long file is a 16-bit mono WAV whose header declares
the duration, 10 s of tone then a sparse hole (silence) (_fixtures.long_wav), at --rate
(8 kHz by default, so the 16 kHz resampler runs over the whole file in windows mode);
--format flac re-encodes it block by block. --short adds that many 2 s clips to the same
batch, as in the issue's report (one long file among ten short ones). Without -m, a tiny
triplet-retriever model of a synthetic dataset is built first (~1 min, _fixtures.make_model,
as in tests/test_pipeline.py), so captions come from retrieval (no decoder): the features, the
cache and the captioner's batching are what is measured, not a language model.

--stub-yamnet replaces YAMNet's network (forward_patches) in the child by a stand-in of the
same output shapes, for a 10-hour windows run in minutes instead of an hour of a loaded
2-core machine: everything else (decoding, resampling, log-mel front end, feature cache,
retrieval, records) is real. The network's own activations are bounded by one encode step
(chunk_patches patches) whatever the file's length; the runs without the stub measure them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from _fixtures import long_wav, make_model, make_workspace
from _fixtures import run_child as run

GOAL_BYTES = 1.5e9
# Child program for --stub-yamnet: `audiocap` with YAMNet's network replaced (see above).
STUB = """
import sys, torch
from audiocap_cli.audio.encoders import yamnet
def forward_patches(self, x):  # [P, 1, frames, bands] -> [P, D], [P, C], cheap
    e = x.mean(dim=(1, 2, 3))[:, None].expand(x.shape[0], self.config.dim).contiguous()
    return e, torch.sigmoid(e[:, : self.config.num_classes])
yamnet.YAMNet.forward_patches = forward_patches
from audiocap_cli.cli import main
sys.argv[0] = "audiocap"
main()
"""


def make_long(path: Path, hours: float, rate: int, fmt: str) -> Path:
    wav = path.with_suffix(".wav")
    if not wav.exists():
        long_wav(wav, hours * 3600.0, rate)
    if fmt == "wav":
        return wav
    out = path.with_suffix(f".{fmt}")
    if not out.exists():
        tmp = out.with_name(f".{out.name}.tmp")
        with sf.SoundFile(tmp, "w", rate, 1, format=fmt.upper(), subtype="PCM_16") as dst:
            for block in sf.blocks(str(wav), blocksize=1 << 20, dtype="int16"):
                dst.write(block)
        tmp.rename(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hours", default="3,10")
    ap.add_argument("--modes", default="crop,windows")
    ap.add_argument("--rate", type=int, default=8000)
    ap.add_argument("--format", default="wav", choices=["wav", "flac"])
    ap.add_argument("--short", type=int, default=10, help="2 s clips captioned in the same batch")
    ap.add_argument("-m", "--model", type=Path, default=None)
    ap.add_argument(
        "--work", type=Path, default=None, help="where inputs (sparse) and the tiny model go"
    )
    ap.add_argument(
        "--stub-yamnet", action="store_true", help="stand-in for YAMNet's network (see above)"
    )
    a = ap.parse_args()

    work = a.work or Path(tempfile.mkdtemp(prefix="bench_long_audio."))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AUDIOCAP_CACHE": str(work / "cache-model")}
    model = a.model
    if model is None:
        ws = work / "dataset"
        if not (ws / "model" / "index").is_dir():
            ws.mkdir(exist_ok=True)
            t0 = time.perf_counter()
            make_model(make_workspace(ws), env)
            print(f"# tiny model built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        model = ws / "model"
    shorts = []
    rng = np.random.default_rng(0)
    for i in range(a.short):
        p = work / "short" / f"clip{i:02d}.wav"
        if not p.exists():
            p.parent.mkdir(exist_ok=True)
            sf.write(p, (0.3 * rng.standard_normal(32000)).astype(np.float32), 16000)
        shorts.append(str(p))

    print(f"{'file':>24} {'mode':>8} {'windows':>8} {'wall s':>8} {'peak RSS':>10}  goal 1.5 GB")
    results = []
    for hours in [float(h) for h in a.hours.split(",")]:
        long = make_long(
            work / f"long_{hours:g}h_{a.rate}Hz".replace(".", "_"), hours, a.rate, a.format
        )
        for mode in a.modes.split(","):
            cache = Path(tempfile.mkdtemp(prefix="cache.", dir=work))  # every run computes
            prog = ["-c", STUB] if a.stub_yamnet else ["-m", "audiocap_cli"]
            cmd = [
                sys.executable,
                *prog,
                "caption",
                str(long),
                *shorts,
                "-m",
                str(model),
                "--long-audio",
                mode,
                "-q",
            ]
            rc, wall, peak, out, err = run(cmd, {**os.environ, "AUDIOCAP_CACHE": str(cache)})
            rows = [json.loads(line) for line in out.splitlines()]
            windows = sum(1 for r in rows if r.get("path") == str(long) and "caption" in r)
            ok = rc == 0 and windows > 0 and len({r["path"] for r in rows}) == 1 + len(shorts)
            results.append(
                {
                    "file": long.name,
                    "hours": hours,
                    "mode": mode,
                    "stub_yamnet": a.stub_yamnet,
                    "exit": rc,
                    "windows": windows,
                    "wall_s": round(wall, 1),
                    "peak_rss_bytes": int(peak),
                    "ok": ok,
                }
            )
            print(
                f"{long.name:>24} {mode:>8} {windows:>8} {wall:>8.1f} {peak / 1e9:>8.2f} GB"
                f"  {'ok' if ok and peak <= GOAL_BYTES else 'FAIL'}",
                flush=True,
            )
            if not ok:
                print(err[-2000:], file=sys.stderr)
            shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
