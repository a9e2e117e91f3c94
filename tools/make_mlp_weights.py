#!/usr/bin/env python3
"""Regenerate data/mlp_digits.npz, the MLP weights of chapters/relax/mlp_tensorir.ipynb.

    python tools/make_mlp_weights.py

Trains the 784-128-10 MLP on the 28x28 handwritten digits exactly as the chapter does
(d2ltvm.load_digits_28x28, d2ltvm.train_mlp with its defaults), saves it with
d2ltvm.save_mlp_params (byte-reproducible) and prints the file's SHA-256, which must equal the
default `checksum` of d2ltvm.load_mlp_params (edit it in the chapter if the recipe changes).
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import d2ltvm  # noqa: E402


def main():
    data = d2ltvm.load_digits_28x28()
    params = d2ltvm.train_mlp(data.train_images, data.train_labels)
    path = d2ltvm.save_mlp_params(params, ROOT / "data" / "mlp_digits.npz")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes), sha256 {d2ltvm.file_hash(path)}")


if __name__ == "__main__":
    main()
