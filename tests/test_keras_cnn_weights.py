"""Tests of the Keras CNN weights the book ships (data/keras_cnn_digits.npz), used by
chapters/compiling_models/keras_mnist.ipynb: train_keras_cnn (defined in that chapter),
save_keras_weights and load_keras_cnn_weights (chapters/appendix/downloads.ipynb) and
tools/train_keras_cnn.py.

Training is repeatable on one machine but not across CPUs (PyTorch's kernels round differently),
so retraining is checked against an accuracy band, never against the shipped bytes."""
import shutil

import numpy as np
import pytest
import tvm
from tvm import relax

import d2ltvm
import train_keras_cnn  # tools/, on sys.path through conftest.py

keras = d2ltvm.import_keras()


@pytest.fixture(scope="module")
def digits():
    """The stand-in data the shipped weights were trained on: (x_train, y_train), (x_test,
    y_test)."""
    train, test, source = d2ltvm.load_mnist_or_digits(stand_in=True)
    assert source == "scikit-learn digits"
    return train, test


@pytest.fixture(scope="module")
def shipped():
    return d2ltvm.load_keras_cnn_weights()


def accuracy(model, x, y):
    return float((model.predict(x, verbose=0).argmax(1) == y).mean())


def test_shipped_weights_load_verified_with_the_recorded_accuracy(shipped, digits):
    path = d2ltvm.keras_cnn_weights_path()
    assert path.name == "keras_cnn_digits.npz"
    assert d2ltvm.file_hash(path) == d2ltvm.KERAS_CNN_WEIGHTS_SHA256
    assert [type(l).__name__ for l in shipped.layers] == [
        "Conv2D", "Conv2D", "MaxPooling2D", "Dropout", "Flatten", "Dense", "Dropout", "Dense"]
    with np.load(path, allow_pickle=False) as archive:  # an ordinary .npz file
        assert archive.files == d2ltvm.keras_weight_names(shipped)
        np.testing.assert_array_equal(archive["5_Dense_kernel"], shipped.layers[5].get_weights()[0])
    (_, _), (x_test, y_test) = digits
    acc = accuracy(shipped, x_test, y_test)
    assert round(acc, 3) == d2ltvm.KERAS_CNN_DIGITS_ACCURACY and acc > 0.9


def test_loading_into_a_given_model_returns_it(shipped):
    model = d2ltvm.keras_mnist_cnn()
    assert d2ltvm.load_keras_cnn_weights(model) is model
    for a, b in zip(model.get_weights(), shipped.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_save_is_byte_reproducible_and_round_trips(tmp_path):
    keras.utils.set_random_seed(3)
    model = d2ltvm.keras_mnist_cnn()
    a = d2ltvm.save_keras_weights(model, tmp_path / "a.npz")
    b = d2ltvm.save_keras_weights(model, tmp_path / "b.npz")
    assert d2ltvm.file_hash(a) == d2ltvm.file_hash(b)
    loaded = d2ltvm.load_keras_cnn_weights(path=a, checksum=d2ltvm.file_hash(a)[:12])
    for x, y in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(x, y)


def test_a_corrupted_copy_is_refused_by_name(tmp_path):
    broken = tmp_path / "keras_cnn_digits.npz"
    shutil.copy(d2ltvm.keras_cnn_weights_path(), broken)
    raw = bytearray(broken.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one bit pattern in the middle of a weight array
    broken.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"keras_cnn_digits.npz has sha256 \w+, not "
                                         + d2ltvm.KERAS_CNN_WEIGHTS_SHA256
                                         + r": the file is corrupt .* tools/train_keras_cnn.py"):
        d2ltvm.load_keras_cnn_weights(path=broken)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"weights nothere.npz not found at .*nothere.npz: "
                                                r"regenerate it .*tools/train_keras_cnn.py"):
        d2ltvm.load_keras_cnn_weights(path=tmp_path / "nothere.npz")


def test_other_files_and_models_are_refused(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.npz is not an .npz file of weights"):
        d2ltvm.load_keras_cnn_weights(path=junk, checksum=None)
    np.savez(tmp_path / "mlp.npz", w0=np.zeros((4, 6), "float32"))
    with pytest.raises(ValueError, match=r"mlp.npz holds the weights \['w0'\], but the model"):
        d2ltvm.load_keras_cnn_weights(path=tmp_path / "mlp.npz", checksum=None)
    with pytest.raises(ValueError, match=r"keras_cnn_digits.npz: kernel of layer .* has shape "
                                         r"\(9216, 128\), the model's has \(9216, 64\)"):
        d2ltvm.load_keras_cnn_weights(d2ltvm.keras_mnist_cnn(hidden=64))
    unbuilt = keras.Sequential([keras.layers.Dense(2)], name="unbuilt")
    with pytest.raises(ValueError, match="model 'unbuilt' was never built"):
        d2ltvm.load_keras_cnn_weights(unbuilt)


def test_tvm_translation_of_the_shipped_model_agrees_with_keras(shipped, digits):
    (_, _), (x_test, y_test) = digits
    expected = shipped.predict(x_test, verbose=0)
    mod = d2ltvm.from_keras(shipped, "NHWC", batch_size=len(x_test))
    vm = relax.VirtualMachine(d2ltvm.compile_model(mod), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x_test)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert round(float((out.argmax(1) == y_test).mean()), 3) == d2ltvm.KERAS_CNN_DIGITS_ACCURACY


def test_retraining_with_the_recipe_lands_within_the_band(capsys):
    """tools/train_keras_cnn.py --check retrains as the chapter does and compares accuracies.

    Not the bytes: they are the same only on a CPU whose kernels round as the shipping one's."""
    assert train_keras_cnn.main(["--check"]) == 0
    out = capsys.readouterr().out
    assert f"within {d2ltvm.KERAS_CNN_ACCURACY_BAND} of the shipped weights': True" in out
    assert "bytes identical to the shipped file:" in out
