"""The one small training helper shared by the retriever and the decoder loops.

A run directory holds:
  ``last.safetensors``  full state (trainable weights, optimizer, RNG states, epoch, best) for
                        resume: the tensors, plus everything else as JSON in its metadata
  ``best.safetensors``  trainable weights of the best validation epoch (the name is the caller's)
  ``metrics.jsonl``     one JSON object per epoch
Writes are atomic, so a run killed at any moment resumes from its last finished epoch. Nothing
is pickled: no file a run reads can run code. A finished run deletes its state
(:meth:`RunDir.finish`) unless asked to keep it.

Two runs must not share a run directory (they would interleave their epochs in
``metrics.jsonl`` and overwrite each other's checkpoints): the training commands hold their
model folder for the whole run (``locks.hold_folder``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..config import atomic_save_safetensors, atomic_write_bytes
from ..errors import ModelNotFoundError

STATE_KEY = "audiocap_state"  # the metadata entry holding the JSON part of the state
LEGACY_STATE = "last.pt"  # the pickled state of older versions: never loaded


@dataclass
class RunState:
    """What survives an interruption besides the weights."""

    epoch: int = 0  # epochs finished
    best_metric: float = math.inf  # lower is better (a validation loss)
    best_epoch: int = -1
    extra: dict[str, Any] = field(default_factory=dict)


class RunDir:
    """Checkpoint, resume, best-validation and metrics log for one training run."""

    def __init__(self, path: str | Path, best_name: str = "best.safetensors") -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.best_name = best_name

    @property
    def last(self) -> Path:
        return self.path / "last.safetensors"

    @property
    def best(self) -> Path:
        return self.path / self.best_name

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def can_resume(self) -> bool:
        """Whether a state to resume from is here. A pickled ``last.pt`` of an older version
        is refused (unpickling can run code), with a one-line error."""
        if not self.last.is_file() and (self.path / LEGACY_STATE).is_file():
            raise ModelNotFoundError(
                f"{self.path / LEGACY_STATE}: training state in the old pickle format, which audiocap no longer "
                "loads (unpickling can run code); delete it or rerun with --no-resume to start over"
            )
        return self.last.is_file()

    def save(
        self, weights: dict[str, torch.Tensor], optim: dict[str, Any], state: RunState
    ) -> None:
        """Save the resumable state after a finished epoch (tensors + JSON, atomically)."""
        tensors: dict[str, torch.Tensor] = {}
        blob = _pack({"weights": weights, "optim": optim, "state": state.__dict__}, tensors)
        atomic_save_safetensors(tensors, self.last, metadata={STATE_KEY: json.dumps(blob)})

    def resume(self) -> tuple[dict[str, torch.Tensor], dict[str, Any], RunState]:
        """Load what :meth:`save` wrote; an unreadable file is a one-line ModelNotFoundError."""
        try:
            with safe_open(str(self.last), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            blob = _unpack(json.loads(meta[STATE_KEY]), tensors)
            return blob["weights"], blob["optim"], RunState(**blob["state"])
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelNotFoundError(
                f"{self.last}: unreadable training state ({detail}); rerun with --no-resume to start over"
            ) from e

    def save_best(self, weights: dict[str, torch.Tensor]) -> None:
        atomic_save_safetensors(weights, self.best)

    def load_best(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.best))

    def log(self, row: dict[str, Any]) -> None:
        """Append one epoch's metrics (a line is written whole, so a kill cannot split it)."""
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        """The metrics rows logged so far (none before the first epoch)."""
        if not self.metrics.is_file():
            return []
        return [
            json.loads(x)
            for x in self.metrics.read_text(encoding="utf-8").splitlines()
            if x.strip()
        ]

    def trim_metrics(self, epochs: int, key: str = "epoch") -> None:
        """Drop metric rows of epochs after ``epochs`` (logged by a run killed before its
        checkpoint landed), so a resumed run's log holds each epoch once (``key``: the rows'
        counter, "step" for runs checkpointed by steps)."""
        if not self.metrics.is_file():
            return
        kept = [row for row in self.rows() if row.get(key, 0) <= epochs]
        atomic_write_bytes(self.metrics, "".join(json.dumps(row) + "\n" for row in kept).encode())

    def reset(self) -> None:
        """Forget a previous run in this directory (checkpoint, best weights, metrics)."""
        for path in (
            self.last,
            self.best,
            self.metrics,
            self.path / LEGACY_STATE,
            self.path / "best.safetensors",
        ):
            path.unlink(missing_ok=True)

    def finish(self, keep_state: bool = False) -> None:
        """End a finished run: its resumable state is deleted unless ``keep_state`` (to train
        it further later); the best weights and metrics stay."""
        if not keep_state:
            self.last.unlink(missing_ok=True)

    def update_best(self, state: RunState, metric: float, weights: dict[str, torch.Tensor]) -> bool:
        """Keep ``weights`` as best if ``metric`` improved; returns whether it did."""
        if metric < state.best_metric:
            state.best_metric, state.best_epoch = float(metric), state.epoch
            self.save_best(weights)
            return True
        return False


# The state as safetensors + JSON: tensors go to the file's tensors ("t0", "t1", ...), the rest
# (nested dicts, lists, tuples, numbers, strings, None) to JSON, where tags keep what JSON
# cannot say: a tensor's place, a tuple, a dict whose keys are not all strings (the optimizer's
# per-parameter state is keyed by int).
_TAGS = ("__tensor__", "__tuple__", "__items__")


def _pack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu()
        return {"__tensor__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(t in obj for t in _TAGS):
            return {k: _pack(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_pack(k, tensors), _pack(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"training state cannot hold a {type(obj).__name__}")


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_unpack(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_hashable(_unpack(k, tensors)): _unpack(v, tensors) for k, v in obj["__items__"]}
    return {k: _unpack(v, tensors) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    if isinstance(key, (dict, list, torch.Tensor)):
        raise TypeError(f"a dict key cannot be a {type(key).__name__}")
    return key
