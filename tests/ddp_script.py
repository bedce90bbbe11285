"""Tiny retriever and decoder runs for tests/test_distributed.py; run as a script, with or
without torchrun: ``ddp_script.py OUT_DIR EPOCHS [hang]`` (dropout 0, so runs are comparable).

``hang``: rank 0 stops in the decoder's second epoch, once the first is checkpointed (it writes
``OUT_DIR/hung`` and sleeps), for the test to kill the launcher mid-epoch. Each rank writes its
pid to ``OUT_DIR/pid<rank>``. A run that ends also runs :func:`sync_check` into
``OUT_DIR/sync``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

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


def main(out: str, epochs: int, hang: bool) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, f"pid{distributed.rank()}").write_text(str(os.getpid()))
    rng = np.random.default_rng(0)
    tr, tr_sim, tr_label = data(50, rng)
    va, va_sim, _ = data(16, rng)
    rcfg = RetrieverConfig(
        d_a=16, frames=4, d_proj=16, heads=2, ff_dim=32, dropout=0.0, batch_size=16
    )
    train_retriever(tr, tr_sim, va, va_sim, rcfg, f"{out}/retriever", epochs, keep_state=True)
    # 21 examples in batches of 8: the last step's 5 split 3 + 2 between two ranks
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
    lm = load_lm("tiny-gpt2")
    train_decoder(
        examples,
        dcfg,
        lm,
        f"{out}/decoder",
        epochs,
        train_cfg=tcfg,
        val_examples=examples[:5],
        keep_state=True,
        progress=_hang_in_second_epoch(out) if hang else None,
    )
    sync_check(f"{out}/sync", examples, dcfg, tcfg, lm, tr, tr_sim, rcfg)


def _hang_in_second_epoch(out: str):
    saved = Path(out, "decoder", "last.safetensors")  # written after the first epoch

    def progress(n: int) -> None:
        if distributed.is_main() and saved.exists():
            Path(out, "hung").write_text("")
            time.sleep(600)

    return progress


def sync_check(out, examples, dcfg, tcfg, lm, frames, similar, rcfg) -> None:
    """One epoch of the decoder's and of the retriever's training loop from one start; saves
    each rank's parameters afterwards, and what the decoder's progress() added up to. The ranks
    train on different slices of each batch: with their gradients summed, their parameters
    stay equal to each other and to one process's; without, each follows its own slice."""
    import torch
    from pytorch_optimizer import AdaBound
    from safetensors.torch import save_file

    from audiocap_cli.generation.decoder import GuidedDecoder
    from audiocap_cli.retrieval.retriever import EmbedNet
    from audiocap_cli.training import decoder as dtrain
    from audiocap_cli.training import retriever as rtrain
    from audiocap_cli.training.rundir import RunDir

    r = distributed.rank()
    Path(out).mkdir(parents=True, exist_ok=True)

    def save(module: torch.nn.Module, name: str) -> None:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, f"{out}/{name}.st")

    torch.manual_seed(1)
    dec = GuidedDecoder(dcfg, lm)
    save(dec, f"decoder_start{r}")
    opt = torch.optim.Adam(dec.parameters(), lr=tcfg.lr_max)
    counted: list[int] = []
    dtrain._train_epoch(dec, opt, dtrain._Batcher(dec), examples, tcfg, 0, counted.append)
    save(dec, f"decoder{r}")
    torch.manual_seed(1)
    net = EmbedNet(rcfg)
    save(net, f"retriever_start{r}")
    loop = rtrain._RetrieverLoop(
        net,
        AdaBound(net.parameters(), lr=rcfg.lr, final_lr=rcfg.final_lr),
        np.random.default_rng(0),
        torch.Generator().manual_seed(0),
        RunDir(f"{out}/run{r}"),
        rcfg,
        [],
    )
    loop.train_epoch(frames, rtrain._similar_matrix(similar, len(frames), self_loops=False))
    save(net, f"retriever{r}")
    Path(out, f"progress{r}.json").write_text(json.dumps(sum(counted)))


if __name__ == "__main__":
    with distributed.session():
        main(sys.argv[1], int(sys.argv[2]), sys.argv[3:] == ["hang"])
