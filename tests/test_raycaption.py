"""The Ray actor's batch logic, without Ray: a failing batch is retried file by file, and a file
that still fails becomes the same error record `audiocap caption` writes."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from audiocap_cli.pipeline.records import CaptionRecord
from audiocap_cli.scale.raycaption import CaptionActor


class _FakeCaptioner:
    def caption_batch(self, paths: list[str]) -> list[list[dict[str, Any]]]:
        if "bad.wav" in paths:
            raise ValueError("cannot decode bad.wav\nsecond line")
        return [[{"path": p, "caption": "A dog barks"}] for p in paths]


def test_failing_batch_is_retried_per_file_and_failures_are_error_records() -> None:
    actor = CaptionActor.__new__(CaptionActor)  # skip loading a model
    actor.captioner = _FakeCaptioner()  # type: ignore[assignment]
    out = actor({"path": np.array(["a.wav", "bad.wav", "c.wav"], dtype=object)})
    assert list(out["failed"]) == [False, True, False]
    bad = CaptionRecord.from_json(json.loads(out["jsonl"][1]))
    assert (
        bad.failed
        and bad.error == "ValueError: cannot decode bad.wav"
        and bad.error_type == "ValueError"
    )
    assert '"caption": "A dog barks"' in out["jsonl"][0]
