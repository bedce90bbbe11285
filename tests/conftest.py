import os
from pathlib import Path

import pytest
from _shared import make_model, make_workspace

from audiocap_cli.generation.lm import FrozenLM, load_lm


@pytest.fixture(scope="session")
def lm() -> FrozenLM:
    """The tiny randomly initialised GPT-2 with the real GPT-2 BPE (shared by decoder tests)."""
    return load_lm("tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic dataset (bench/speed/_fixtures.py), shared by the end-to-end modules that
    only read it: they add files beside it (outputs, other models), never change its audio."""
    return make_workspace(tmp_path_factory.mktemp("e2e"))


@pytest.fixture(scope="session")
def tiny_model(tiny_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Its tiny triplet-retriever model (real shipped YAMNet), trained once per session; tests
    that change a model copy it first."""
    cache = tmp_path_factory.mktemp("tiny-model-cache")
    return make_model(tiny_workspace, {**os.environ, "AUDIOCAP_CACHE": str(cache)})


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An $AUDIOCAP_CACHE in which the shipped SmolLM2 GGUF was converted (~25 s), once per
    session (test_lm checks the conversion and its reuse)."""
    cache = tmp_path_factory.mktemp("smollm2-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUDIOCAP_CACHE", str(cache))
        load_lm("smollm2")
    return cache


@pytest.fixture()
def cache_with_smollm2(smollm2_cache: Path, tmp_path: Path) -> Path:
    """A fresh ``tmp_path/cache`` for $AUDIOCAP_CACHE whose ``lm/`` is the session's converted
    SmolLM2: for tests of the shipped default, which need the LM but not its conversion."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "lm").symlink_to(smollm2_cache / "lm", target_is_directory=True)
    return cache


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module of tiny-batch encoder tests: on a busy shared CPU, two
    threads meeting at every conv's barrier cost 100 ms a layer. Restored afterwards for the
    other modules (use as ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
