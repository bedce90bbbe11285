"""Package a trained label-grounded model as the shipped default (package data, a few MB).

Writes ``src/audiocap_cli/data/models/<name>/``: ``model.json`` (ModelConfig, training data,
validation scores, the command that rebuilds it), ``labelspace.json``, ``corpus.tsv.gz`` (the
captions and label classes the index is built from) and ``decoder/`` (decoder.json and the
trainable weights in float16). The index itself is derived on first use (``models.py``).

Usage:
  python scripts/ship_default.py MODEL_DIR CORPUS_CSV [--name audiocaps-labels]
         [--report report.json] [--command "..."]
  python scripts/ship_default.py --revalidate report.json [--name audiocaps-labels]
         (only the shipped model.json's validation scores, e.g. after a change of decoding
         defaults; the weights and every other file stay as written)
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from audiocap_cli.config import load_config, to_dict
from audiocap_cli.generation.decoder import export_float16
from audiocap_cli.pipeline import registry as models
from audiocap_cli.pipeline.modeldir import ModelDir
from audiocap_cli.retrieval import labelspace as ls
from audiocap_cli.training import grounded

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path, nargs="?")
    ap.add_argument("corpus", type=Path, nargs="?")
    ap.add_argument("--name", default=models.DEFAULT_MODEL)
    ap.add_argument(
        "--report",
        type=Path,
        default=None,
        help="JSON written by bench/quality/grounded_report.py --json",
    )
    ap.add_argument("--command", default="", help="the command that trained MODEL")
    ap.add_argument(
        "--revalidate",
        type=Path,
        default=None,
        metavar="REPORT",
        help="rewrite only the shipped model.json's validation scores from this report",
    )
    args = ap.parse_args()
    out = models.SHIPPED_ROOT / args.name
    if args.revalidate is not None:
        info_path = out / models.MODEL_INFO
        info = json.loads(info_path.read_text())
        info["validation"] = validation_of(args.revalidate)
        info_path.write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        print(f"{info_path}: validation from {args.revalidate}")
        return
    if args.model is None or args.corpus is None:
        ap.error("MODEL_DIR and CORPUS_CSV are required (or --revalidate REPORT)")
    md = ModelDir(args.model)
    cfg = md.load()
    if cfg.retrieval != "labels":
        raise SystemExit(f"{args.model}: not a label-grounded model (retrieval {cfg.retrieval!r})")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written into a staging folder, then swapped in: MODEL may link into the shipped folder it
    # replaces (the default's materialised cache copy does), and a failed run leaves the old one.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{args.name}.") as tmp:
        stage = Path(tmp) / args.name
        stage.mkdir()
        ship(md, cfg, stage, args)
        shutil.rmtree(out, ignore_errors=True)
        stage.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB")


def ship(md: ModelDir, cfg, out: Path, args: argparse.Namespace) -> None:
    """Write the shipped files of ``md`` into the empty folder ``out``."""
    lcfg = load_config(ls.LabelSpaceConfig, md.index / ls.CONFIG_NAME)
    shutil.copyfile(md.index / ls.CONFIG_NAME, out / ls.CONFIG_NAME)
    # the labels `bootstrap` indexed: the clips' own and, for rare classes, caption-text labels
    lab = grounded.read_labelled(args.corpus, encoder=cfg.encoder, text_labels=True)
    models.write_corpus(out, lab.captions, grounded.corpus_labels(lab.labels, lcfg))  # as indexed
    if md.has_decoder():  # a retrieval-only model has none
        export_float16(md.decoder, out / md.decoder.relative_to(md.path))
    validation = validation_of(args.report) if args.report is not None else {}
    info = {
        "model": to_dict(cfg) | {"dataset": None},
        "trained_on": (
            f"{len(lab.captions)} AudioCaps train captions (MIT) with their clips' AudioSet "
            f"labels (CC BY 4.0); {lab.coverage.describe()}; label space {lcfg}"
        ),
        "validation": validation,
        "command": args.command,
        "measured_by": "python bench/quality/grounded_report.py -m " + args.name,
    }
    (out / models.MODEL_INFO).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def validation_of(report: Path) -> dict[str, float]:
    """The METEOR and CIDEr-D (x100) of the generated and consensus rows of a
    ``bench/quality/grounded_report.py --json`` report, as model.json records them."""
    validation = {}
    for row in json.loads(report.read_text()):
        if row["system"] in ("generated", "consensus guidance") and "meteor" in row:
            tag = f"{row['set']} {row['system']}"
            validation[f"{tag} METEOR"] = round(100 * row["meteor"], 1)
            validation[f"{tag} CIDEr-D"] = round(100 * row["cider_d"], 1)
    return validation


if __name__ == "__main__":
    main()
