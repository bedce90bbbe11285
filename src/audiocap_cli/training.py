"""The one small training helper shared by the retriever and the decoder loops.

A run directory holds:
  ``last.pt``           full state (trainable weights, optimizer, scheduler, epoch, best) for resume
  ``best.safetensors``  trainable weights of the best validation epoch (no pickled code)
  ``metrics.jsonl``     one JSON object per epoch
Writes are atomic, so a run killed at any moment resumes from its last finished epoch.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import atomic_write_bytes


@dataclass
class RunState:
    """What survives an interruption besides the weights."""

    epoch: int = 0  # epochs finished
    best_metric: float = math.inf  # lower is better (a validation loss)
    best_epoch: int = -1
    extra: dict[str, Any] = field(default_factory=dict)


class RunDir:
    """Checkpoint, resume, best-validation and metrics log for one training run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.safetensors"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    def can_resume(self) -> bool:
        return self.last.is_file()

    def save(self, weights: dict[str, torch.Tensor], optim: dict[str, Any], state: RunState) -> None:
        """Save the resumable state after a finished epoch."""
        buf = io.BytesIO()
        torch.save({"weights": weights, "optim": optim, "state": state.__dict__}, buf)
        atomic_write_bytes(self.last, buf.getvalue())

    def resume(self) -> tuple[dict[str, torch.Tensor], dict[str, Any], RunState]:
        """Load what :meth:`save` wrote."""
        blob = torch.load(self.last, map_location="cpu", weights_only=False)
        return blob["weights"], blob["optim"], RunState(**blob["state"])

    def save_best(self, weights: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
        tmp = self.best.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(self.best)

    def load_best(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.best))

    def log(self, row: dict[str, Any]) -> None:
        """Append one epoch's metrics (a line is written whole, so a kill cannot split it)."""
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def trim_metrics(self, epochs: int) -> None:
        """Drop metric rows of epochs after ``epochs`` (logged by a run killed before its
        checkpoint landed), so a resumed run's log holds each epoch once."""
        if not self.metrics.is_file():
            return
        kept = [
            line
            for line in self.metrics.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("epoch", 0) <= epochs
        ]
        atomic_write_bytes(self.metrics, "".join(f"{line}\n" for line in kept).encode())

    def reset(self) -> None:
        """Forget a previous run in this directory (checkpoint, best weights, metrics)."""
        for path in (self.last, self.best, self.metrics):
            path.unlink(missing_ok=True)

    def update_best(self, state: RunState, metric: float, weights: dict[str, torch.Tensor]) -> bool:
        """Keep ``weights`` as best if ``metric`` improved; returns whether it did."""
        if metric < state.best_metric:
            state.best_metric, state.best_epoch = float(metric), state.epoch
            self.save_best(weights)
            return True
        return False
