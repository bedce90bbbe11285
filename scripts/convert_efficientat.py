"""Convert EfficientAT's released mn04_as state dict into the float16 weights audiocap ships.

    python scripts/convert_efficientat.py SRC.pt [--out DIR] [--labels CSV] [--license FILE]

Reads SRC.pt with torch.load(weights_only=True), checks that it loads strictly into our
mn04_as (audio/encoders/efficientat.py), and writes into DIR (default: the package's
src/audiocap_cli/data/encoders/efficientat/):
  mn04_as.safetensors      float16, but for the conv and batch-norm tensors of the
                           feature layers (efficientat.keeps_float32), which stay float32;
  class_labels_indices.csv the 527 classes (index, mid, display name), copied;
  LICENSE                  the original's MIT notice, copied (it must travel with the weights).
CSV and LICENSE default to the files beside SRC.pt. Prints the largest score difference
between the float32 source and the float16 copy on a few seconds of noise.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from audiocap_cli.audio.encoders import efficientat as eat
from audiocap_cli.errors import AudiocapError


def convert(src: Path, out: Path, labels: Path, license_file: Path) -> Path:
    """Write the three files into ``out``; returns the safetensors path."""
    state = eat.read_state_dict(src)
    eat.EfficientAT().load_checkpoint(state, str(src))  # strict: refuses a wrong layout
    classes = eat.class_map(labels)  # refuses a list that is not 527 classes
    if not license_file.is_file():
        raise AudiocapError(f"{license_file}: licence notice not found (it ships with the weights)")
    out.mkdir(parents=True, exist_ok=True)
    dest = out / eat.SHIPPED_WEIGHTS.name
    eat.write_safetensors(state, dest)
    if labels.resolve() != (out / eat.SHIPPED_CLASSES.name).resolve():
        shutil.copyfile(labels, out / eat.SHIPPED_CLASSES.name)
    if license_file.resolve() != (out / "LICENSE").resolve():
        shutil.copyfile(license_file, out / "LICENSE")
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.2f} MB, {len(classes)} classes)")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("src", type=Path, help="mn04_as_mAP_432.pt (EfficientAT release v0.0.1)")
    ap.add_argument("--out", type=Path, default=eat.SHIPPED_DIR)
    ap.add_argument("--labels", type=Path, default=None, help="default: beside SRC")
    ap.add_argument("--license", type=Path, default=None, help="default: LICENSE beside SRC")
    args = ap.parse_args()
    labels = args.labels or args.src.parent / "class_labels_indices.csv"
    license_file = args.license or args.src.parent / "LICENSE"
    try:
        dest = convert(args.src, args.out, labels, license_file)
        full = eat.load_efficientat(args.src)
        half = eat.load_efficientat(dest)
    except AudiocapError as e:
        sys.exit(f"convert_efficientat: error: {e}")
    noise = 0.1 * torch.randn(4, 5 * full.sample_rate, generator=torch.Generator().manual_seed(0))
    diff = (full.encode(noise).scores - half.encode(noise).scores).abs().max().item()
    print(f"max |float32 - float16| score on noise: {diff:.2e}")


if __name__ == "__main__":
    main()
