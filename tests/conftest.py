import pytest

from audiocap_cli.lm import FrozenLM, load_lm


@pytest.fixture(scope="session")
def lm() -> FrozenLM:
    """The tiny randomly initialised GPT-2 with the real GPT-2 BPE (shared by decoder tests)."""
    return load_lm("tiny-gpt2")
