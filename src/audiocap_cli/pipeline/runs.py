"""What the training runs (``training/workflows.py``) and the evaluation run
(``evaluation/run.py``) share: the :class:`Reporter` they report through and the frozen
features of a dataset split's clips.

A run reports through two optional callbacks: ``say(message)`` for one-line notes and
``progress(name, total)``, which starts a named task and returns ``advance(n)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..audio.features import ClipFeatures, FeatureCache
from ..datasets import Clip
from ..errors import AudioError, DatasetError
from .modeldir import ModelConfig

Advance = Callable[[int], None]
Progress = Callable[[str, "int | None"], Advance]


def _no_progress(name: str, total: int | None) -> Advance:
    return lambda n: None


def _quiet(message: str) -> None:
    pass


@dataclass(frozen=True)
class Reporter:
    say: Callable[[str], None] = _quiet
    progress: Progress = _no_progress


def clip_features(
    clips: Sequence[Clip],
    encoder,
    model_cfg: ModelConfig,
    cache: FeatureCache,
    rep: Reporter,
    what: str,
    scores_of: Callable[[ClipFeatures], np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Frames ``[N, T, D]`` (and class scores ``[N, T, C]`` or None) of the first window of every
    clip, the paper's fixed-length input. Any unusable file stops the run with one DatasetError
    naming every such file (training on a silently shrunk set would be worse). ``scores_of``:
    a clip's scores as a captioner reads them (``Captioner.window_scores(f, 0)``), instead of
    the first window's cached ``[T, C]``."""
    paths = [c.path for c in clips]
    if any(p is None for p in paths):
        raise DatasetError(
            what, [f"clip {c.id!r} has no audio file" for c in clips if c.path is None]
        )
    results = cache.get_many(
        paths, encoder, model_cfg.policy(), progress=rep.progress(f"features: {what}", len(paths))
    )
    bad = [f"{r}" for r in results if isinstance(r, AudioError)]
    if bad:
        raise DatasetError(what, bad)
    frames = np.stack([r.frames[0] for r in results])  # type: ignore[union-attr]
    scores = None
    if all(r.scores is not None for r in results):  # type: ignore[union-attr]
        pick = scores_of or (lambda r: r.scores[0])  # type: ignore[index]
        scores = np.stack([pick(r) for r in results])  # type: ignore[arg-type]
    return frames, scores
