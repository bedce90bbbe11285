"""RunDir: the resumable state is safetensors + JSON (no pickle), so no file a run reads can
run code; a finished run drops its state unless asked to keep it."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from audiocap_cli.errors import ModelNotFoundError
from audiocap_cli.training.rundir import RunDir, RunState


class _Payload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def test_state_round_trip_keeps_types(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), betas=(0.8, 0.9))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    rng = np.random.default_rng(7)
    rng.random(3)
    state = RunState(
        epoch=3,
        best_metric=math.inf,
        best_epoch=-1,
        extra={
            "np_rng": rng.bit_generator.state,
            "gen": torch.Generator().get_state(),
            "data": [[1, 2], 3],
        },
    )
    run = RunDir(tmp_path)
    run.save(net.state_dict(), {"adam": opt.state_dict()}, state)
    weights, optim, back = run.resume()
    for k, v in net.state_dict().items():
        torch.testing.assert_close(weights[k], v, rtol=0, atol=0)
    opt2 = torch.optim.Adam(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(optim["adam"])  # int-keyed per-parameter state survives JSON
    assert set(opt2.state_dict()["state"]) == {0, 1} and opt2.param_groups[0]["betas"] == (0.8, 0.9)
    assert back.epoch == 3 and back.best_metric == math.inf and back.extra["data"] == [[1, 2], 3]
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = back.extra["np_rng"]  # 128-bit ints survive
    assert rng2.random() == rng.random()
    assert not (tmp_path / "last.pt").exists()
    run.finish(keep_state=True)
    assert run.can_resume()
    run.finish()
    assert not run.can_resume()


@pytest.mark.parametrize("name", ["last.safetensors", "last.pt"])
def test_malicious_pickle_is_never_unpickled(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).write_bytes(pickle.dumps({"weights": _Payload(marker)}))
    run = RunDir(run_dir)
    with pytest.raises(ModelNotFoundError) as e:
        if run.can_resume():
            run.resume()
    assert "\n" not in str(e.value) and "--no-resume" in str(e.value)
    assert not marker.exists()
    run.reset()  # --no-resume: the old state goes, nothing is loaded
    assert not run.can_resume() and not marker.exists()
