"""Build the embedded Fashion-MNIST subset shipped in src/dsnas/embedded/fashion_mnist/.

Reads the full set in IDX format (Debian: `apt-get install dataset-fashion-mnist`, files under
/usr/share/datasets/fashion-mnist/) and keeps a stratified, seeded sample of each split, written
back in the same IDX layout so that one loader reads both.

    python scripts/make_embedded_subset.py [--src DIR] [--train-per-class N] [--test-per-class N]
"""

import argparse
import gzip
from pathlib import Path

import numpy as np

DEFAULT_SRC = "/usr/share/datasets/fashion-mnist"
OUT = Path(__file__).resolve().parents[1] / "src" / "dsnas" / "embedded" / "fashion_mnist"


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default=DEFAULT_SRC)
    p.add_argument("--train-per-class", type=int, default=1200)
    p.add_argument("--test-per-class", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    OUT.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", args.train_per_class), ("t10k", args.test_per_class)):
        images = read_idx(Path(args.src) / f"{split}-images-idx3-ubyte.gz")
        labels = read_idx(Path(args.src) / f"{split}-labels-idx1-ubyte.gz")
        keep = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                               for c in range(int(labels.max()) + 1)])
        keep = rng.permutation(keep)
        write_idx(OUT / f"{split}-images-idx3-ubyte.gz", images[keep])
        write_idx(OUT / f"{split}-labels-idx1-ubyte.gz", labels[keep])
        print(f"{split}: {len(keep)} images ({per_class} per class)")


if __name__ == "__main__":
    main()
