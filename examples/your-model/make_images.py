"""Write a tiny image folder in the layout torchvision's ImageFolder reads: one
sub-folder per class, PNG files, from scikit-learn's 8x8 digits (upscaled to 16x16).

    python make_images.py images            # all 1,797 digits
    python make_images.py images --per-class 40
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--per-class", type=int, default=0, help="images per class (0: all)")
    args = parser.parse_args()
    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)
    counts: dict[int, int] = {}
    for i, (img, label) in enumerate(zip(pixels, digits.target, strict=True)):
        if args.per_class and counts.get(label, 0) >= args.per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = args.folder / f"digit-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").resize((16, 16), Image.NEAREST).save(folder / f"{i}.png")
    print(f"{sum(counts.values())} images in {len(counts)} classes under {args.folder}")


if __name__ == "__main__":
    main()
