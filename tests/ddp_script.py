"""Tiny retriever and decoder runs for tests/test_distributed.py; run as a script, with or
without torchrun: ``ddp_script.py OUT_DIR EPOCHS`` (dropout 0, so runs are comparable)."""

from __future__ import annotations

import sys

import numpy as np

from audiocap_cli.generation.decoder import DecoderConfig
from audiocap_cli.generation.lm import load_lm
from audiocap_cli.retrieval.retriever import RetrieverConfig
from audiocap_cli.scale import distributed
from audiocap_cli.training.decoder import DecoderTrainConfig, train_decoder
from audiocap_cli.training.retriever import train_retriever

WORDS = ["dog", "rain", "car", "bird"]


def data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    label = np.arange(n) % len(WORDS)
    frames = rng.standard_normal((n, 4, 16)).astype(np.float32) + label[:, None, None] * 0.5
    similar = [np.flatnonzero((label == label[i]) & (np.arange(n) != i)) for i in range(n)]
    return frames, similar, label


def main(out: str, epochs: int) -> None:
    rng = np.random.default_rng(0)
    tr, tr_sim, tr_label = data(50, rng)
    va, va_sim, _ = data(16, rng)
    rcfg = RetrieverConfig(
        d_a=16, frames=4, d_proj=16, heads=2, ff_dim=32, dropout=0.0, batch_size=16
    )
    train_retriever(tr, tr_sim, va, va_sim, rcfg, f"{out}/retriever", epochs, keep_state=True)
    examples = [
        (
            f"a {WORDS[c]} makes a sound number {i % 5}",
            [f"a {WORDS[c]} sound", f"the {WORDS[c]}"],
            tr[i],
        )
        for i, c in enumerate(tr_label[:21])
    ]
    dcfg = DecoderConfig(lm="tiny-gpt2", d_l=64, d_a=16, dropout=0.0, k=2, guidance="separate")
    tcfg = DecoderTrainConfig(batch_size=8, micro_batch=3, lr_max=1e-3)
    train_decoder(
        examples,
        dcfg,
        load_lm("tiny-gpt2"),
        f"{out}/decoder",
        epochs,
        train_cfg=tcfg,
        val_examples=examples[:5],
        keep_state=True,
    )


if __name__ == "__main__":
    with distributed.session():
        main(sys.argv[1], int(sys.argv[2]))
