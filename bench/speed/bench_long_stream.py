"""Streaming of a long real recording in windows mode (issue 35, item 10): seconds to the first
line, peak RSS, wall time, lines; optionally a SIGKILL mid-file followed by `--resume`.

    .venv/bin/python bench/speed/bench_long_stream.py [--hours 10] [--fast] [-m MODEL]
        [--rate 16000] [--kill-at SECONDS] [--work DIR] [--sounds DIR]

Needs ../shared/data/sounds. The long file is REAL audio: every clip there that audiocap can
read, decoded to mono at --rate, concatenated in a fixed order and repeated until --hours,
written as a 16-bit WAV under --work (a temporary folder by default, never the repository).

Run 1 is `audiocap caption LONG --long-audio windows [--fast] [-m MODEL] -q` with records on
stdout: the seconds from its start to its first line on stdout, its peak RSS (the child's own
ru_maxrss, os.wait4), its wall time, the lines it printed, and whether they hold every window
start exactly once. Without -m the shipped default model is used (its index and, without
--fast, its LM are made ready first by a warm-up run on one short clip, not timed).

With --kill-at S, run 2 writes to `-o FILE`, is SIGKILLed S seconds after it starts, and run 3
resumes it (`-o FILE --resume`); their line counts, and the windows missing or repeated in the
final file, are reported. Expected windows: every start the policy gives for the file's length
(audio.io.window_starts; the default 10 s windows, no overlap).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

SOUNDS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sounds"
GOAL_BYTES = 1.5e9


def make_real_long(sounds: Path, out: Path, hours: float, rate: int) -> tuple[int, int]:
    """Write ``hours`` of the real clips under ``sounds`` one after another (repeated) to
    ``out``; returns (samples written, distinct clips used)."""
    from audiocap_cli.audio.io import AUDIO_EXTENSIONS, load
    from audiocap_cli.errors import AudioError

    clips = []
    for p in sorted(sounds.rglob("*")):
        if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file():
            try:
                clips.append(load(p, rate))
            except AudioError:
                continue
    want = int(hours * 3600 * rate)
    if out.exists() and sf.info(str(out)).frames == want:
        return want, len(clips)
    tmp = out.with_name(f".{out.name}.tmp")
    done = 0
    with sf.SoundFile(tmp, "w", rate, 1, format="WAV", subtype="PCM_16") as dst:
        while done < want:
            for c in clips:
                part = c[: want - done]
                dst.write(part)
                done += len(part)
                if done >= want:
                    break
    tmp.rename(out)
    return want, len(clips)


def child(cmd: list[str], env: dict[str, str], kill_at: float | None = None) -> dict:
    """Run ``cmd``; its first stdout line's time, lines, wall, peak RSS and exit status."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if kill_at is not None:
        time.sleep(kill_at)
        os.kill(proc.pid, signal.SIGKILL)  # not proc.send_signal: its poll() would reap it
    first, lines = None, []
    assert proc.stdout is not None
    for line in proc.stdout:
        if first is None:
            first = time.perf_counter() - t0
        lines.append(line)
    err = proc.stderr.read() if proc.stderr is not None else b""
    _, status, usage = os.wait4(proc.pid, 0)
    return {
        "exit": os.waitstatus_to_exitcode(status),
        "first_line_s": None if first is None else round(first, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "lines": lines,
        "stderr": err.decode(errors="replace")[-2000:],
    }


def windows_check(lines: list[bytes], samples: int, rate: int) -> dict:
    """Windows missing and repeated among ``lines`` against the policy's starts."""
    from audiocap_cli.audio.io import ClipPolicy, window_starts

    want = {
        round(float(s) / rate, 3)
        for s in window_starts(samples, ClipPolicy(long_audio="windows"), rate)
    }
    got = collections.Counter(json.loads(x)["start"] for x in lines if x.endswith(b"\n"))
    return {
        "expected_windows": len(want),
        "missing": len(want - set(got)),
        "repeated": sum(n - 1 for n in got.values() if n > 1),
        "unexpected": len(set(got) - want),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--hours", type=float, default=10.0)
    ap.add_argument("--fast", action="store_true", help="caption --fast (no decoder)")
    ap.add_argument("-m", "--model", default=None, help="default: the shipped default model")
    ap.add_argument("--rate", type=int, default=16000, help="the long file's sample rate")
    ap.add_argument("--kill-at", type=float, default=None, help="SIGKILL run 2 after S seconds")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--sounds", type=Path, default=SOUNDS)
    a = ap.parse_args()
    if not a.sounds.is_dir():
        sys.exit(f"skipped: {a.sounds} not found (needs ../shared/data/sounds)")

    work = a.work or Path(tempfile.mkdtemp(prefix="bench_long_stream."))
    work.mkdir(parents=True, exist_ok=True)
    long = work / (f"real_{a.hours:g}h_{a.rate}Hz".replace(".", "_") + ".wav")
    t0 = time.perf_counter()
    samples, n_clips = make_real_long(a.sounds, long, a.hours, a.rate)
    print(f"# {long}: {samples / a.rate / 3600:g} h of {n_clips} real clips, "
          f"built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)  # fmt: skip
    env = {**os.environ, "AUDIOCAP_CACHE": str(work / "cache")}
    base = [sys.executable, "-m", "audiocap_cli", "caption"]
    opts = (["-m", a.model] if a.model else []) + (["--fast"] if a.fast else [])
    warm = next(p for p in sorted(a.sounds.rglob("*.wav")))
    subprocess.run([*base, str(warm), *opts, "-q"], env=env, check=True, capture_output=True)

    cmd = [*base, str(long), "--long-audio", "windows", *opts, "-q"]
    r = child(cmd, env)
    result = {
        "file": long.name,
        "hours": a.hours,
        "fast": a.fast,
        "model": a.model or "default",
        **{k: r[k] for k in ("exit", "first_line_s", "wall_s", "peak_rss_bytes")},
        "lines": len(r["lines"]),
        **windows_check(r["lines"], samples, a.rate),
    }
    print(
        f"stdout run: first line {r['first_line_s']} s, wall {r['wall_s']} s, peak RSS "
        f"{r['peak_rss_bytes'] / 1e9:.2f} GB (goal 1.5), {len(r['lines'])} lines, exit {r['exit']}",
        flush=True,
    )
    if r["exit"] != 0:
        print(r["stderr"], file=sys.stderr)
    if a.kill_at is not None:
        out = work / "killed.jsonl"
        out.unlink(missing_ok=True)
        k = child([*cmd, "-o", str(out)], env, kill_at=a.kill_at)
        killed = out.read_bytes().splitlines(keepends=True)
        res = child([*cmd, "-o", str(out), "--resume"], env)
        final = out.read_bytes().splitlines(keepends=True)
        result["kill"] = {
            "kill_at_s": a.kill_at,
            "killed_exit": k["exit"],
            "lines_after_kill": sum(1 for x in killed if x.endswith(b"\n")),
            "cut_line": bool(killed) and not killed[-1].endswith(b"\n"),
            "resume_wall_s": res["wall_s"],
            "resume_exit": res["exit"],
            "resume_peak_rss_bytes": res["peak_rss_bytes"],
            "lines_after_resume": len(final),
            "last_marked": sum(1 for x in final if json.loads(x).get("last")),
            **windows_check(final, samples, a.rate),
        }
        print(f"kill + resume: {json.dumps(result['kill'])}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
