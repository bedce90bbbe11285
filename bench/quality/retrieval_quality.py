"""Does the trained retriever find same-class clips better than raw encoder features?

On the labelled real clips of ../shared/data/sounds (captions written from labels by
bench/quality/sounds_dataset.py), trains the triplet retriever on the train split with
`audiocap train-retriever`'s code path, then for every test clip whose label occurs in train
retrieves the k nearest train clips and reports precision@1 and @5 of "same label" for:
  1NN-raw    mean-pooled, L2-normalised YAMNet frames (the paper's 1NN baseline)
  triplet    the trained Embed network
Usage: python bench/quality/retrieval_quality.py [--epochs 100] [--work runs/retrieval]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sounds_dataset  # noqa: E402

from audiocap_cli.audio.features import FeatureCache  # noqa: E402
from audiocap_cli.config import fingerprint  # noqa: E402
from audiocap_cli.datasets import load_split  # noqa: E402
from audiocap_cli.pipeline.modeldir import ModelConfig, ModelDir  # noqa: E402
from audiocap_cli.pipeline.runs import Reporter, clip_features  # noqa: E402
from audiocap_cli.retrieval.retriever import embed, load_retriever, mean_pool  # noqa: E402
from audiocap_cli.training import workflows  # noqa: E402


def precision(
    query: np.ndarray, keys: np.ndarray, q_labels: list[str], k_labels: list[str], k: int
) -> float:
    """Mean share of same-label clips among each query's k nearest keys (squared L2)."""
    d = (query**2).sum(1)[:, None] - 2 * query @ keys.T + (keys**2).sum(1)[None, :]
    nn = np.argsort(d, axis=1)[:, :k]
    kl = np.array(k_labels)
    return float(np.mean([(kl[row] == lab).mean() for row, lab in zip(nn, q_labels)]))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path("runs/retrieval"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not sounds_dataset.SOUNDS.is_dir():
        print(
            f"skipped: {sounds_dataset.SOUNDS} not found (needs ../shared/data/sounds)",
            file=sys.stderr,
        )
        return 0
    data = args.work / "sounds"
    sounds_dataset.write_dataset(data)
    labels = {}
    for split in ("train", "val", "test"):
        for line in (data / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            labels[row["id"]] = row["label"]
    t0 = time.time()
    model = args.work / "model"
    workflows.train_retriever(data, model, ModelConfig(), args.epochs, seed=args.seed)
    t_train = time.time() - t0
    md = ModelDir(model)
    cfg = md.load()
    encoder = workflows._encoder_for(cfg)
    cache = FeatureCache()
    rep = Reporter()
    train, test = load_split(data, "train"), load_split(data, "test")
    tr, _ = clip_features(train, encoder, cfg, cache, rep, "train")
    te, _ = clip_features(test, encoder, cfg, cache, rep, "test")
    tr_lab = [labels[c.id] for c in train]
    keep = [i for i, c in enumerate(test) if labels[c.id] in set(tr_lab)]
    te, te_lab = te[keep], [labels[test[i].id] for i in keep]
    net = load_retriever(md.retriever, fingerprint(encoder.config))
    spaces = {
        "1NN-raw (mean-pooled YAMNet)": (mean_pool(te), mean_pool(tr)),
        "triplet retriever": (embed(net, te), embed(net, tr)),
    }
    print(
        f"{len(keep)} test clips with a label seen in {len(train)} train clips; retriever trained {args.epochs} epochs in {t_train:.0f} s"
    )
    print(f"{'system':32s} {'P@1':>6s} {'P@5':>6s}")
    for name, (q, k) in spaces.items():
        print(
            f"{name:32s} {precision(q, k, te_lab, tr_lab, 1):6.3f} {precision(q, k, te_lab, tr_lab, 5):6.3f}"
        )
    chance = np.mean([np.mean(np.array(tr_lab) == lab) for lab in te_lab])
    print(f"{'chance (label frequency)':32s} {chance:6.3f} {chance:6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
