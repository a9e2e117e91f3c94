#!/usr/bin/env python3
"""Regenerate data/fashion_mnist_test2000.npz, the part of Fashion-MNIST's test set the book ships.

    python tools/make_fashion_mnist_subset.py                    # download the original files
    python tools/make_fashion_mnist_subset.py --local /usr/share/datasets/fashion-mnist
    python tools/make_fashion_mnist_subset.py --check            # compare, write nothing

The cut: for each of the 10 classes, the first 200 images of the test set (t10k-*) in file order,
kept in that order (d2ltvm.fashion_mnist_subset_indices): 2,000 images. The file is an ordinary
.npz (zip, deflated, fixed time stamps) with `images` (uint8, 2000x28x28, the original bytes),
`labels` (uint8) and `indices` (uint16, positions in the test set). Its bytes depend only on these
arrays (and zlib), and its SHA-256 must equal d2ltvm.FASHION_MNIST_SUBSET_SHA256.
Fashion-MNIST: Copyright (c) 2017 Zalando SE, MIT licence
(https://github.com/zalandoresearch/fashion-mnist).
"""
import argparse
import io
import pathlib
import sys
import zipfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import d2ltvm  # noqa: E402

OUT = ROOT / "data" / "fashion_mnist_test2000.npz"


def subset_arrays(local=None):
    """Return the subset's arrays, cut from the original test files (content-checked)."""
    files = d2ltvm.FASHION_MNIST_FILES
    arrays = {}
    for key in ("test_images", "test_labels"):
        name, md5, sha256 = files[key]
        path = (pathlib.Path(local) / name if local else
                d2ltvm.download(d2ltvm.FASHION_MNIST_MIRROR + name, md5, algorithm="md5"))
        arrays[key] = d2ltvm.read_idx_gz(path, sha256=sha256)
    indices = d2ltvm.fashion_mnist_subset_indices(arrays["test_labels"])
    return {"images": arrays["test_images"][indices], "labels": arrays["test_labels"][indices],
            "indices": indices.astype("uint16")}


def save(arrays, path):
    """Write ARRAYS as a deflated .npz whose bytes depend only on the values."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name in ("images", "labels", "indices"):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]))
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local", help="folder with the original files (default: download them)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the shipped file, write nothing")
    args = parser.parse_args()
    arrays = subset_arrays(args.local)
    if args.check:
        shipped = d2ltvm.load_fashion_mnist_subset()
        same = (np.array_equal(shipped.indices, arrays["indices"])
                and np.array_equal(shipped.test_labels, arrays["labels"])
                and np.array_equal(np.round(shipped.test_images * 255), arrays["images"]))
        print("the shipped subset matches the original files" if same else "MISMATCH")
        return 0 if same else 1
    save(arrays, OUT)
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size} bytes), "
          f"sha256 {d2ltvm.file_hash(OUT)}; per class {np.bincount(arrays['labels']).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
