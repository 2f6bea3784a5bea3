"""Build a second real small-image dataset in IDX layout: scikit-learn's handwritten digits
(1,797 images of 8x8 px, 16 grey levels, from the UCI optdigits set, shipped inside the
scikit-learn package, so nothing is downloaded), scaled to 28x28 and split 80/20 per class.

Used to check that the defaults are not tuned to Fashion-MNIST:

    pip install scikit-learn
    python scripts/make_digits_idx.py --out /tmp/digits
    dsnas search --data /tmp/digits --set batch_size=32
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_embedded_subset import write_idx  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder to write the IDX files to")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("scikit-learn is needed: pip install scikit-learn") from None
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)
    images = torch.nn.functional.interpolate(images, size=args.size, mode="bilinear", align_corners=False)
    images = images.squeeze(1).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
    labels = digits.target.astype(np.uint8)
    rng = np.random.default_rng(args.seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:round(args.test_fraction * (labels == c).sum())]
                           for c in range(10)])
    train = rng.permutation(np.setdiff1d(np.arange(len(labels)), test))
    test = rng.permutation(test)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, keep in (("train", train), ("t10k", test)):
        write_idx(out / f"{split}-images-idx3-ubyte.gz", images[keep])
        write_idx(out / f"{split}-labels-idx1-ubyte.gz", labels[keep])
    print(f"{len(train)} train / {len(test)} test images, {args.size} px -> {out}")


if __name__ == "__main__":
    main()
