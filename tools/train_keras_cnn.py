#!/usr/bin/env python3
"""Regenerate data/keras_cnn_digits.npz: the weights of the CNN of
chapters/compiling_models/keras_mnist.ipynb.

    python tools/train_keras_cnn.py            train, write the file, print its sha256 and accuracy
    python tools/train_keras_cnn.py --check    train, compare with the shipped file, write nothing

Trains the Keras MNIST CNN exactly as the chapter does (d2ltvm.train_keras_cnn with its defaults:
2 threads, seed 0, Adam, 5 epochs in batches of 64) on the offline stand-in data
(d2ltvm.load_mnist_or_digits(stand_in=True): scikit-learn's digits, enlarged to 28x28), saves the
weights with d2ltvm.save_keras_weights (the bytes depend only on the values) and prints the file's
SHA-256 and the network's test accuracy. Those must equal d2ltvm.KERAS_CNN_WEIGHTS_SHA256 and
d2ltvm.KERAS_CNN_DIGITS_ACCURACY (edit them in chapters/appendix/downloads.ipynb, and
data/README.md, when you ship new weights).

Training is repeatable on one machine, not across CPUs: PyTorch and oneDNN pick kernels by the
instruction set, and their rounding differs. Retrained elsewhere the file's bytes differ and the
accuracy lands near, not on, the shipped one (--check reports both).
"""
import argparse
import pathlib
import platform
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import d2ltvm  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare a fresh training with the shipped file; write nothing")
    args = parser.parse_args(argv)
    import torch
    (x_train, y_train), (x_test, y_test), source = d2ltvm.load_mnist_or_digits(stand_in=True)
    print(f"training on {len(x_train)} {source} images; CPU {d2ltvm.cpu_model()} "
          f"({platform.machine()}), PyTorch kernels {torch.backends.cpu.get_cpu_capability()}",
          flush=True)
    model, history = d2ltvm.train_keras_cnn(x_train, y_train)
    accuracy = float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean())
    print("training accuracy per epoch:", [round(a, 4) for a in history.history["accuracy"]])
    print(f"test accuracy {accuracy:.3f} on {len(x_test)} images "
          f"(shipped weights: {d2ltvm.KERAS_CNN_DIGITS_ACCURACY})")
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            path = d2ltvm.save_keras_weights(model, pathlib.Path(tmp) / "fresh.npz")
            same = d2ltvm.file_hash(path) == d2ltvm.file_hash(d2ltvm.keras_cnn_weights_path())
        band = abs(accuracy - d2ltvm.KERAS_CNN_DIGITS_ACCURACY)
        print("bytes identical to the shipped file:", same)
        print(f"accuracy within {d2ltvm.KERAS_CNN_ACCURACY_BAND} of the shipped weights':",
              band <= d2ltvm.KERAS_CNN_ACCURACY_BAND)
        return 0 if band <= d2ltvm.KERAS_CNN_ACCURACY_BAND else 1
    path = d2ltvm.save_keras_weights(model, d2ltvm.keras_cnn_weights_path())
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes), "
          f"sha256 {d2ltvm.file_hash(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
