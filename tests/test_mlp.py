"""Unit tests of the helpers saved by chapters/relax/mlp_tensorir.ipynb (data, training, weights, numpy MLP)."""
import gzip
import shutil

import numpy as np
import pytest

import d2ltvm


@pytest.fixture(scope="module")
def digits():
    return d2ltvm.load_digits_28x28()


def test_digits_shapes_ranges_and_labels(digits):
    assert digits.name == "digits" and digits.classes == [str(d) for d in range(10)]
    assert digits.train_images.shape == (1437, 28, 28) and digits.test_images.shape == (360, 28, 28)
    assert digits.train_labels.shape == (1437,) and digits.test_labels.shape == (360,)
    for images in (digits.train_images, digits.test_images):
        assert images.dtype == np.float32 and images.min() == 0.0 and images.max() <= 1.0
    for labels in (digits.train_labels, digits.test_labels):
        assert labels.dtype == np.int64 and set(np.unique(labels)) == set(range(10))


def test_digits_are_the_sklearn_digits_resized_bilinearly(digits):
    """Same images as torch's bilinear resize (half-pixel centres), in the seeded split order."""
    import torch
    from sklearn.datasets import load_digits
    small = torch.from_numpy(load_digits().images / 16.0)[:, None]
    expected = torch.nn.functional.interpolate(small, size=(28, 28), mode="bilinear",
                                               align_corners=False)[:, 0].numpy()
    order = np.random.default_rng(0).permutation(1797)
    np.testing.assert_allclose(digits.test_images, expected[order[:360]], rtol=0, atol=1e-6)
    np.testing.assert_allclose(digits.train_images, expected[order[360:]], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(digits.test_labels, load_digits().target[order[:360]])


def test_digits_split_is_deterministic_and_seeded(digits):
    again = d2ltvm.load_digits_28x28()
    np.testing.assert_array_equal(again.test_images, digits.test_images)
    np.testing.assert_array_equal(again.train_labels, digits.train_labels)
    other = d2ltvm.load_digits_28x28(seed=1)
    assert not np.array_equal(other.test_labels, digits.test_labels)
    assert len(d2ltvm.load_digits_28x28(test_size=100).test_labels) == 100


@pytest.mark.parametrize("bad", [0, 1797, 2.5, "360"])
def test_digits_bad_test_size(bad):
    with pytest.raises(ValueError, match="test_size"):
        d2ltvm.load_digits_28x28(test_size=bad)


def test_offline_fashion_mnist_raises_download_error(tmp_path):
    with pytest.raises(d2ltvm.DownloadError, match="D2LTVM_OFFLINE=1 forbids network access"):
        d2ltvm.load_fashion_mnist(folder=tmp_path)


def test_load_mlp_data_falls_back_with_a_notice(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("D2LTVM_CACHE", str(tmp_path))
    data = d2ltvm.load_mlp_data()
    assert data.name == "digits"
    out = capsys.readouterr().out
    assert "FashionMNIST unavailable" in out and "stand-in" in out and "handwritten digits" in out


def write_idx_gz(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())
    return path


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    """Serve small synthetic IDX files in place of the FashionMNIST downloads."""
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 28, 28)),
              "train-labels-idx1-ubyte.gz": np.arange(6) % 10,
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (4, 28, 28)),
              "t10k-labels-idx1-ubyte.gz": np.array([9, 0, 3, 3])}
    calls = []

    def fake_download(url, checksum, filename=None, folder=None, algorithm="sha256", timeout=60):
        name = url.rsplit("/", 1)[1]
        calls.append((url, checksum, algorithm))
        return write_idx_gz(tmp_path / name, arrays[name])
    monkeypatch.setattr(d2ltvm, "download", fake_download)
    return arrays, calls


def test_fashion_mnist_parsing(fake_fashion):
    arrays, calls = fake_fashion
    data = d2ltvm.load_fashion_mnist()
    assert data.name == "fashion_mnist" and data.classes[9] == "Ankle boot"
    assert data.train_images.shape == (6, 28, 28) and data.train_images.dtype == np.float32
    np.testing.assert_allclose(data.test_images * 255, arrays["t10k-images-idx3-ubyte.gz"], atol=1e-4)
    np.testing.assert_array_equal(data.test_labels, [9, 0, 3, 3])
    assert data.test_labels.dtype == np.int64
    assert len(calls) == 4 and all(alg == "md5" and len(md5) == 32 for _, md5, alg in calls)


def test_load_mlp_data_uses_fashion_mnist_when_available(fake_fashion, capsys):
    assert d2ltvm.load_mlp_data().name == "fashion_mnist"
    assert capsys.readouterr().out == ""


def test_read_idx_gz_rejects_bad_files(tmp_path):
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="bad.gz is not an IDX file of unsigned bytes"):
        d2ltvm.read_idx_gz(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match=r"short.gz holds 3 bytes, its header says \(5,\)"):
        d2ltvm.read_idx_gz(tmp_path / "short.gz")


def test_train_mlp_is_deterministic_and_shaped(digits):
    x, y = digits.train_images[:200], digits.train_labels[:200]
    first = d2ltvm.train_mlp(x, y, hidden=16, epochs=2)
    second = d2ltvm.train_mlp(x, y, hidden=16, epochs=2)
    assert {k: v.shape for k, v in first.items()} == {"w0": (16, 784), "b0": (16,), "w1": (10, 16), "b1": (10,)}
    for k in first:
        assert first[k].dtype == np.float32
        np.testing.assert_array_equal(first[k], second[k])
    other = d2ltvm.train_mlp(x, y, hidden=16, epochs=2, seed=1)
    assert not np.array_equal(other["w0"], first["w0"])


def test_train_mlp_leaves_global_torch_state_alone(digits):
    import torch
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    d2ltvm.train_mlp(digits.train_images[:50], digits.train_labels[:50], hidden=8, epochs=1)
    assert torch.equal(torch.rand(3), expected) and torch.get_num_threads() == threads


def test_train_mlp_bad_input(digits):
    with pytest.raises(ValueError, match="N labels"):
        d2ltvm.train_mlp(digits.train_images[:10], digits.train_labels[:9])
    with pytest.raises(ValueError, match="integers from 0 to 9"):
        d2ltvm.train_mlp(digits.train_images[:10], np.full(10, 10))


def test_shipped_weights_are_what_the_recipe_makes(digits):
    """Retraining with the chapter's recipe gives weights as accurate as data/mlp_digits.npz.

    Not byte for byte: PyTorch's kernels round differently on other CPUs, and training grows that.
    """
    x = digits.test_images.reshape(-1, 784)

    def accuracy(params):
        return (d2ltvm.numpy_mlp(x, **params).argmax(axis=1) == digits.test_labels).mean()

    shipped = accuracy(d2ltvm.load_mlp_params())
    assert shipped > 0.95
    assert abs(accuracy(d2ltvm.train_mlp(digits.train_images, digits.train_labels)) - shipped) <= 0.02
    # a changed recipe is caught: one epoch instead of twenty lands far outside the band
    assert abs(accuracy(d2ltvm.train_mlp(digits.train_images, digits.train_labels, epochs=1,
                                         lr=0.001)) - shipped) > 0.02


def test_save_load_roundtrip_and_reproducible_bytes(tmp_path):
    rng = np.random.default_rng(0)
    params = {"w0": rng.standard_normal((5, 7)), "b0": rng.standard_normal(5),
              "w1": rng.standard_normal((3, 5)), "b1": rng.standard_normal(3)}
    a = d2ltvm.save_mlp_params(params, tmp_path / "a.npz")
    b = d2ltvm.save_mlp_params(params, tmp_path / "b.npz")
    assert d2ltvm.file_hash(a) == d2ltvm.file_hash(b)
    loaded = d2ltvm.load_mlp_params(a, checksum=d2ltvm.file_hash(a)[:12])
    for k in params:
        assert loaded[k].dtype == np.float32
        np.testing.assert_array_equal(loaded[k], params[k].astype("float32"))
    np.testing.assert_array_equal(np.load(a)["w1"], loaded["w1"])  # an ordinary .npz file
    with pytest.raises(ValueError, match=r"params lacks \['b1'\]"):
        d2ltvm.save_mlp_params({k: v for k, v in params.items() if k != "b1"}, tmp_path / "c.npz")


def test_load_mlp_params_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npz not found .* tools/make_mlp_weights.py"):
        d2ltvm.load_mlp_params(tmp_path / "nothere.npz")


def test_load_mlp_params_corrupt_file(tmp_path):
    broken = tmp_path / "mlp_digits.npz"
    shutil.copy(d2ltvm.mlp_params_path(), broken)
    raw = bytearray(broken.read_bytes())
    raw[1000] ^= 0xFF
    broken.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="mlp_digits.npz has sha256 .* corrupt .* tools/make_mlp_weights.py"):
        d2ltvm.load_mlp_params(broken)


def test_load_mlp_params_rejects_other_files(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.npz is not an MLP weight file"):
        d2ltvm.load_mlp_params(junk, checksum=None)
    np.savez(tmp_path / "wrong.npz", w0=np.zeros((4, 6), "float32"), b0=np.zeros(3, "float32"),
             w1=np.zeros((2, 4), "float32"), b1=np.zeros(2, "float32"))
    with pytest.raises(ValueError, match=r"wrong.npz holds inconsistent weights: w0 \(4, 6\) float32, b0 \(3,\)"):
        d2ltvm.load_mlp_params(tmp_path / "wrong.npz", checksum=None)


def test_shipped_file_loads_with_expected_shapes():
    params = d2ltvm.load_mlp_params()
    assert {k: v.shape for k, v in params.items()} == {"w0": (128, 784), "b0": (128,), "w1": (10, 128), "b1": (10,)}


def test_numpy_mlp_matches_torch_and_checks_shapes():
    import torch
    rng = np.random.default_rng(0)
    w0, b0 = rng.standard_normal((8, 12)).astype("float32"), rng.standard_normal(8).astype("float32")
    w1, b1 = rng.standard_normal((3, 8)).astype("float32"), rng.standard_normal(3).astype("float32")
    x = rng.standard_normal((5, 12)).astype("float32")
    t = [torch.from_numpy(a) for a in (x, w0, b0, w1, b1)]
    expected = torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(t[0], t[1], t[2])), t[3], t[4])
    np.testing.assert_allclose(d2ltvm.numpy_mlp(x, w0, b0, w1, b1), expected.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"data must have shape \(N, 12\), got \(12,\)"):
        d2ltvm.numpy_mlp(x[0], w0, b0, w1, b1)
