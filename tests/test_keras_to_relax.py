"""Tests of the Keras helpers: keras_mnist_cnn and the Keras-to-Relax translator (from_keras,
KerasToRelax) of chapters/compiling_models/keras_mnist.ipynb, checked layer by layer against
Keras' own predict, with random weights, in both layouts; and the helpers the chapter imports
from the appendix, import_keras (chapters/appendix/frameworks.ipynb) and load_mnist_or_digits
(chapters/appendix/downloads.ipynb)."""
import numpy as np
import pytest
import tvm
from tvm import relax

import d2ltvm

keras = d2ltvm.import_keras()
layers = keras.layers

# Both sides compute in float32 but sum in different orders; values are O(1).
TOL = dict(rtol=1e-5, atol=1e-5)


def compile_relax(mod):
    """Compile with the book's pipeline, as the chapter does; return a numpy-in, -out function."""
    vm = relax.VirtualMachine(d2ltvm.compile_model(mod), tvm.cpu())
    return lambda x: vm["main"](tvm.runtime.tensor(x)).numpy()


def check_against_keras(model, input_shape, batch=2, seed=0):
    """Compare the translated model with model.predict in both layouts; return the largest
    differences."""
    x = np.random.default_rng(seed).standard_normal((batch, *input_shape)).astype("float32")
    expected = model.predict(x, verbose=0)
    diffs = []
    for layout in ("NHWC", "NCHW"):
        mod = d2ltvm.from_keras(model, layout=layout, batch_size=batch)
        x_in = x
        if layout == "NCHW" and x.ndim == 4:
            x_in = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        out = compile_relax(mod)(x_in)
        if layout == "NCHW" and out.ndim == 4:  # 4-D outputs come back in the requested layout
            out = out.transpose(0, 2, 3, 1)
        assert out.shape == expected.shape, layout
        np.testing.assert_allclose(out, expected, err_msg=layout, **TOL)
        diffs.append(float(np.abs(out - expected).max()))
    return diffs


def chain(input_shape, *body, seed=0):
    """A Sequential model from keras.Input, with random (seeded) weights."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(input_shape), *body])


# Odd sizes (9x11) make 'same' padding uneven; two input channels make layout mistakes visible.
SHAPE = (9, 11, 2)

LAYER_CASES = {
    "conv_valid_relu": lambda: [layers.Conv2D(3, 3, activation="relu")],
    "conv_valid_stride2_nobias": lambda: [layers.Conv2D(3, (3, 2), strides=2, use_bias=False)],
    "conv_same_stride1_tanh": lambda: [layers.Conv2D(4, 3, padding="same", activation="tanh")],
    "conv_same_stride2_uneven": lambda: [layers.Conv2D(3, (2, 4), strides=(2, 3), padding="same")],
    "conv_same_dilated_sigmoid": lambda: [layers.Conv2D(2, 3, dilation_rate=2, padding="same",
                                                        activation="sigmoid")],
    "conv_softmax": lambda: [layers.Conv2D(3, 1, activation="softmax")],
    "maxpool_valid": lambda: [layers.MaxPooling2D(2)],
    "maxpool_valid_strides": lambda: [layers.MaxPooling2D((3, 2), strides=(1, 2))],
    "maxpool_same_uneven": lambda: [layers.MaxPooling2D(2, padding="same")],
    "maxpool_same_stride1": lambda: [layers.MaxPooling2D(3, strides=1, padding="same")],
    "avgpool_valid": lambda: [layers.AveragePooling2D((2, 3), strides=(1, 2))],
    "avgpool_same_even": lambda: [layers.AveragePooling2D(3, strides=2, padding="same")],
    "avgpool_same_uneven": lambda: [layers.AveragePooling2D(2, padding="same")],
    "dropout": lambda: [layers.Dropout(0.5)],
    "activation_layers": lambda: [layers.Activation("tanh"), layers.ReLU(),
                                  layers.Activation("sigmoid"), layers.Activation("linear")],
    "softmax_4d_last_axis": lambda: [layers.Softmax()],
    "softmax_4d_height_axis": lambda: [layers.Softmax(axis=1)],
    "dense_on_4d": lambda: [layers.Dense(4, activation="relu")],
    "flatten_dense_softmax": lambda: [layers.Conv2D(3, 3), layers.Flatten(),
                                      layers.Dense(5, activation="softmax")],
    "flatten_dense_nobias": lambda: [layers.Flatten(), layers.Dense(3, use_bias=False)],
}


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_matches_keras_in_both_layouts(name):
    model = chain(SHAPE, *LAYER_CASES[name]())
    diffs = check_against_keras(model, SHAPE)
    assert max(diffs) < 1e-5


def test_mnist_cnn_matches_keras_for_one_image_and_a_batch():
    keras.utils.set_random_seed(1)
    model = d2ltvm.keras_mnist_cnn()
    assert [type(l).__name__ for l in model.layers] == [
        "Conv2D", "Conv2D", "MaxPooling2D", "Dropout", "Flatten", "Dense", "Dropout", "Dense"]
    check_against_keras(model, (28, 28, 1), batch=1)
    check_against_keras(model, (28, 28, 1), batch=5)


def test_functional_chain_is_accepted_with_its_input_layer():
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SHAPE, name="image")
    hidden = layers.Conv2D(3, 3, activation="relu")(inputs)
    outputs = layers.Dense(2)(layers.Flatten()(hidden))
    model = keras.Model(inputs, outputs)
    assert type(model.layers[0]).__name__ == "InputLayer"
    check_against_keras(model, SHAPE)
    mod = d2ltvm.from_keras(model)
    assert mod["main"].params[0].name == "image"


def test_nchw_inserts_one_transpose_before_flatten_and_nhwc_none():
    model = chain(SHAPE, layers.Conv2D(3, 3), layers.MaxPooling2D(2), layers.Flatten(),
                  layers.Dense(2))
    nhwc = d2ltvm.from_keras(model, "NHWC").script(show_meta=False)
    nchw = d2ltvm.from_keras(model, "NCHW").script(show_meta=False)
    assert nhwc.count("R.permute_dims") == 0 and 'kernel_layout="HWIO"' in nhwc
    assert nchw.count("R.permute_dims") == 1 and 'kernel_layout="OIHW"' in nchw
    assert "R.Tensor((1, 2, 9, 11)" in nchw  # channels-first input


def test_naive_flatten_without_transpose_differs():
    """The pitfall the chapter shows: skipping the transpose before Flatten gives other numbers."""
    class NaiveFlatten(d2ltvm.KerasToRelax):
        def convert_Flatten(self, layer, y):
            return self.emit(relax.op.reshape(y, (self.shape(y)[0], -1)), layer)

    model = chain(SHAPE, layers.Conv2D(3, 3), layers.Flatten(), layers.Dense(4))
    x = np.random.default_rng(0).standard_normal((1, *SHAPE)).astype("float32")
    out = compile_relax(NaiveFlatten("NCHW").convert(model))(x.transpose(0, 3, 1, 2).copy())
    assert not np.allclose(out, model.predict(x, verbose=0), atol=1e-3)


def test_unsupported_layer_is_named():
    model = chain(SHAPE, layers.Conv2D(3, 3), layers.BatchNormalization(name="bn"),
                  layers.Flatten())
    with pytest.raises(NotImplementedError,
                       match=r"layer 'bn' \(BatchNormalization\) is not supported.*"
                             r"supported: InputLayer, Conv2D"):
        d2ltvm.from_keras(model)


@pytest.mark.parametrize("body,match", [
    (lambda: [layers.Conv2D(2, 3, activation="elu", name="c")],
     r"layer 'c' \(Conv2D\) uses activation 'elu'"),
    (lambda: [layers.Dense(2, activation="gelu", name="d")],
     r"layer 'd' \(Dense\) uses activation 'gelu'"),
    (lambda: [layers.Conv2D(4, 3, groups=2, name="g")], r"layer 'g' \(Conv2D\) has groups=2"),
    (lambda: [layers.ReLU(max_value=6.0, name="r6")], r"layer 'r6' \(ReLU\) sets max_value"),
    (lambda: [layers.LeakyReLU(name="leaky")], r"layer 'leaky' \(LeakyReLU\) is not supported"),
    (lambda: [layers.Flatten(data_format="channels_first", name="f")],
     r"layer 'f' \(Flatten\) uses data_format"),
])
def test_unsupported_settings_are_named(body, match):
    model = chain((8, 8, 2), *body())
    with pytest.raises(NotImplementedError, match=match):
        d2ltvm.from_keras(model)


def test_unbuilt_model_is_refused_until_built():
    model = keras.Sequential([layers.Conv2D(2, 3), layers.Flatten(), layers.Dense(2)],
                             name="never_built")
    with pytest.raises(ValueError,
                       match=r"model 'never_built' was never built.*keras\.Input.*model\.build"):
        d2ltvm.from_keras(model)
    model.build((None, 8, 8, 1))
    assert isinstance(d2ltvm.from_keras(model), tvm.IRModule)


def test_bad_arguments_and_inputs():
    model = chain((8, 8, 1), layers.Flatten())
    with pytest.raises(ValueError, match="layout must be"):
        d2ltvm.from_keras(model, layout="CHWN")
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            d2ltvm.from_keras(model, batch_size=bad)
    with pytest.raises(TypeError, match="expects a Keras model"):
        d2ltvm.from_keras(object())
    unknown = keras.Sequential([keras.Input((None, None, 1)), layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match="unknown dimensions"):
        d2ltvm.from_keras(unknown)
    branches = keras.Input((4,))
    two_heads = keras.Model(branches,
                            layers.Add()([layers.Dense(2)(branches), layers.Dense(2)(branches)]))
    with pytest.raises(NotImplementedError, match="chains of layers only"):
        d2ltvm.from_keras(two_heads)


def test_compiled_module_refuses_a_wrong_shape():
    model = chain((8, 8, 1), layers.Flatten())
    run = compile_relax(d2ltvm.from_keras(model, "NHWC", batch_size=1))
    with pytest.raises(Exception, match="mismatch"):
        run(np.zeros((1, 1, 8, 8), "float32"))


def test_import_keras_refuses_another_backend(monkeypatch):
    # Keras is already loaded on torch here, so the environment is not read again ...
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert d2ltvm.import_keras() is keras
    # ... but a Keras running on another backend is refused.
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="already imported with the 'jax' backend"):
        d2ltvm.import_keras()


def test_import_keras_refuses_a_conflicting_environment(monkeypatch):
    import sys
    monkeypatch.delitem(sys.modules, "keras")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    with pytest.raises(RuntimeError, match="KERAS_BACKEND is 'tensorflow'"):
        d2ltvm.import_keras()


def test_load_mnist_or_digits_offline_uses_the_named_stand_in(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("D2LTVM_OFFLINE", "1")
    monkeypatch.setenv("D2LTVM_CACHE", str(tmp_path))
    (x_train, y_train), (x_test, y_test), source = d2ltvm.load_mnist_or_digits(n_test=300)
    assert source == "scikit-learn digits"
    assert "stand-in" in capsys.readouterr().out
    assert x_train.shape == (1497, 28, 28, 1) and x_test.shape == (300, 28, 28, 1)
    assert x_train.dtype == np.float32 and 0 <= x_train.min() and x_train.max() <= 1
    assert y_train.dtype == np.int64 and set(np.unique(y_test)) == set(range(10))
    # 4-pixel empty frame, as MNIST's digits sit in a 20x20 box
    assert x_train[:, :4].max() == 0 and x_train[:, 24:].max() == 0
    again = d2ltvm.load_mnist_or_digits(n_test=300)
    np.testing.assert_array_equal(again[1][0], x_test)


def test_load_mnist_or_digits_reads_a_cached_mnist_npz(monkeypatch, tmp_path):
    """With mnist.npz in the cache (and the right checksum), the real loader path runs."""
    rng = np.random.default_rng(0)
    fake = {"x_train": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
            "y_train": np.arange(6, dtype=np.uint8),
            "x_test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
            "y_test": np.arange(3, dtype=np.uint8)}
    np.savez(tmp_path / "mnist.npz", **fake)
    monkeypatch.setenv("D2LTVM_OFFLINE", "1")
    monkeypatch.setenv("D2LTVM_CACHE", str(tmp_path))
    monkeypatch.setattr(d2ltvm, "MNIST_NPZ_SHA256", d2ltvm.file_hash(tmp_path / "mnist.npz"))
    (x_train, y_train), (x_test, y_test), source = d2ltvm.load_mnist_or_digits()
    assert source == "MNIST"
    assert x_train.shape == (6, 28, 28, 1) and x_train.dtype == np.float32
    np.testing.assert_allclose(x_test[..., 0], fake["x_test"] / 255, rtol=1e-6)
    assert y_train.tolist() == list(range(6)) and y_test.dtype == np.int64
