#!/usr/bin/env python3
"""Regenerate data/mlp_fashion.npz, the MLP weights the book ships (see
chapters/appendix/downloads.ipynb for the recipe and the loader).

    python tools/make_mlp_weights.py                                  # download Fashion-MNIST
    python tools/make_mlp_weights.py --local /usr/share/datasets/fashion-mnist
    python tools/make_mlp_weights.py --check      # retrain, compare, write nothing

Trains the 784-128-10 MLP on all 60,000 Fashion-MNIST training images exactly as the appendix's
recipe says (d2ltvm.train_mlp with its defaults: 20 epochs, SGD with momentum, lr 0.01, seed 0,
one thread; about 30 seconds), from the original files (downloaded and md5-checked, or a local
copy such as Debian's package dataset-fashion-mnist, checked by content). It saves the weights
with d2ltvm.save_mlp_params (byte-reproducible) and prints the file's SHA-256, which must equal
d2ltvm.MLP_PARAMS_SHA256 (the default checksum of d2ltvm.load_mlp_params), and the accuracy on
the full test set (10,000 images), recorded as d2ltvm.MLP_TEST_ACCURACY. On another CPU
PyTorch's kernels round differently, so retraining gives other bytes; --check then asserts that
the accuracy lands within d2ltvm.MLP_ACCURACY_BAND of the recorded one (as tests/test_mlp.py does).
"""
import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import d2ltvm  # noqa: E402


def accuracy(params, images, labels):
    scores = d2ltvm.numpy_mlp(images.reshape(len(images), -1), **params)
    return float((scores.argmax(axis=1) == labels).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local", help="folder with the four original files (default: download)")
    parser.add_argument("--check", action="store_true",
                        help="retrain and compare with the shipped weights")
    args = parser.parse_args()
    data = d2ltvm.load_fashion_mnist(local=args.local)
    params = d2ltvm.train_mlp(data.train_images, data.train_labels)
    acc = accuracy(params, data.test_images, data.test_labels)
    if args.check:
        shipped = accuracy(d2ltvm.load_mlp_params(), data.test_images, data.test_labels)
        gap = abs(acc - d2ltvm.MLP_TEST_ACCURACY)
        print(f"shipped weights: test accuracy {shipped:.4f} "
              f"(recorded {d2ltvm.MLP_TEST_ACCURACY:.4f}); retrained: {acc:.4f}, "
              f"{gap:.4f} from the record (band {d2ltvm.MLP_ACCURACY_BAND})")
        recorded = abs(shipped - d2ltvm.MLP_TEST_ACCURACY) < 1e-3
        return 0 if gap <= d2ltvm.MLP_ACCURACY_BAND and recorded else 1
    path = d2ltvm.save_mlp_params(params, ROOT / "data" / "mlp_fashion.npz")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes), "
          f"sha256 {d2ltvm.file_hash(path)}; test accuracy {acc:.4f} "
          f"on {len(data.test_labels)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
