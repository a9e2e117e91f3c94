"""Unit tests of the MLP helpers: Fashion-MNIST, training and weights (saved by
chapters/appendix/downloads.ipynb) and numpy_mlp (saved by chapters/relax/mlp_tensorir.ipynb)."""
import gzip
import hashlib
import os
import pathlib
import shutil

import numpy as np
import pytest

import d2ltvm

DEBIAN_FOLDER = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def subset():
    return d2ltvm.load_fashion_mnist_subset()


def original_folder():
    """A folder with the four original Fashion-MNIST files: $D2LTVM_FASHION_MNIST, Debian's, or the cache."""
    names = [name for name, _, _ in d2ltvm.FASHION_MNIST_FILES.values()]
    for folder in (os.environ.get("D2LTVM_FASHION_MNIST"), DEBIAN_FOLDER, d2ltvm.cache_dir()):
        if folder and all((pathlib.Path(folder) / n).is_file() for n in names):
            return pathlib.Path(folder)
    return None


@pytest.fixture(scope="module")
def fashion():
    folder = original_folder()
    if folder is None:
        pytest.skip("the original Fashion-MNIST files are absent (install Debian's dataset-fashion-mnist, "
                    "download them with d2ltvm.load_fashion_mnist(), or set D2LTVM_FASHION_MNIST)")
    return d2ltvm.load_fashion_mnist(local=folder)


def test_shipped_subset_file(subset):
    root = pathlib.Path(d2ltvm.__file__).resolve().parent.parent
    shipped = root / "data" / "fashion_mnist_test2000.npz"
    assert d2ltvm.file_hash(shipped) == d2ltvm.FASHION_MNIST_SUBSET_SHA256
    assert subset.name == "fashion_mnist_subset" and subset.classes == d2ltvm.FASHION_MNIST_CLASSES
    assert subset.test_images.shape == (2000, 28, 28) and subset.test_images.dtype == np.float32
    assert subset.test_images.min() == 0.0 and subset.test_images.max() == 1.0
    assert subset.test_labels.dtype == np.int64 and np.bincount(subset.test_labels).tolist() == [200] * 10
    assert subset.train_images is None and subset.train_labels is None
    indices = subset.indices
    assert (np.diff(indices) > 0).all() and indices.min() >= 0 and indices.max() < 10000
    np.testing.assert_array_equal(np.round(subset.test_images * 255) / 255, subset.test_images)


def test_subset_indices_rule():
    labels = np.array([3, 1, 3, 0, 1, 3, 2] + list(range(10)) * 2)
    picked = d2ltvm.fashion_mnist_subset_indices(labels, per_class=2)
    assert picked.tolist() == sorted(picked.tolist()) and len(picked) == 20
    assert picked[:7].tolist() == [0, 1, 2, 3, 4, 6, 7]
    with pytest.raises(ValueError, match="fewer than 4"):
        d2ltvm.fashion_mnist_subset_indices(labels, per_class=4)


def test_subset_is_cut_from_the_original_test_set(subset, fashion):
    expected = d2ltvm.fashion_mnist_subset_indices(fashion.test_labels)
    np.testing.assert_array_equal(subset.indices, expected)
    np.testing.assert_array_equal(subset.test_images, fashion.test_images[expected])
    np.testing.assert_array_equal(subset.test_labels, fashion.test_labels[expected])


def test_corrupt_subset_is_refused(tmp_path):
    broken = tmp_path / "fashion_mnist_test2000.npz"
    broken.write_bytes(b"not it")
    with pytest.raises(ValueError, match="fashion_mnist_test2000.npz has sha256 .*make_fashion_mnist_subset"):
        d2ltvm.load_fashion_mnist_subset(broken)
    with pytest.raises(FileNotFoundError, match="nothere.npz not found.*make_fashion_mnist_subset"):
        d2ltvm.load_fashion_mnist_subset(tmp_path / "nothere.npz")


def test_offline_fashion_mnist_raises_download_error(tmp_path):
    with pytest.raises(d2ltvm.DownloadError, match="D2LTVM_OFFLINE=1 forbids network access"):
        d2ltvm.load_fashion_mnist(folder=tmp_path)


def test_load_mlp_data_falls_back_to_the_shipped_subset(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("D2LTVM_CACHE", str(tmp_path))
    data = d2ltvm.load_mlp_data()
    assert data.name == "fashion_mnist_subset" and len(data.test_labels) == 2000
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "first 200 test images of each class" in out
    assert "stand-in" not in out


def idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_gz(path, array):
    with gzip.open(path, "wb") as f:
        f.write(idx_bytes(array))
    return path


@pytest.fixture
def fake_arrays(monkeypatch):
    """Small synthetic IDX contents, made the expected contents of the four files."""
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 28, 28)),
              "train-labels-idx1-ubyte.gz": np.arange(6) % 10,
              "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (4, 28, 28)),
              "t10k-labels-idx1-ubyte.gz": np.array([9, 0, 3, 3])}
    files = {key: (name, md5, hashlib.sha256(idx_bytes(arrays[name])).hexdigest())
             for key, (name, md5, _) in d2ltvm.FASHION_MNIST_FILES.items()}
    monkeypatch.setattr(d2ltvm, "FASHION_MNIST_FILES", files)
    return arrays


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch, fake_arrays):
    """Serve the synthetic IDX files in place of the Fashion-MNIST downloads."""
    calls = []

    def fake_download(url, checksum, filename=None, folder=None, algorithm="sha256", timeout=60):
        name = url.rsplit("/", 1)[1]
        calls.append((url, checksum, algorithm))
        return write_idx_gz(tmp_path / name, fake_arrays[name])
    monkeypatch.setattr(d2ltvm, "download", fake_download)
    return fake_arrays, calls


@pytest.fixture
def local_copy(tmp_path, fake_arrays, monkeypatch):
    """A folder holding the (synthetic) original files, re-gzipped; downloading is forbidden."""
    def no_download(*args, **kwargs):
        raise AssertionError("a local copy must not download anything")
    monkeypatch.setattr(d2ltvm, "download", no_download)
    for name, array in fake_arrays.items():
        write_idx_gz(tmp_path / name, array)
    return tmp_path


def test_load_fashion_mnist_from_a_local_folder(local_copy, fake_arrays):
    data = d2ltvm.load_fashion_mnist(local=local_copy)
    np.testing.assert_allclose(data.train_images * 255, fake_arrays["train-images-idx3-ubyte.gz"], atol=1e-4)
    np.testing.assert_array_equal(data.test_labels, [9, 0, 3, 3])


def test_local_folder_checks_contents_not_gzip_bytes(local_copy, fake_arrays):
    name = "t10k-labels-idx1-ubyte.gz"
    with gzip.GzipFile(local_copy / name, "wb", compresslevel=1, mtime=12345) as f:  # other .gz bytes
        f.write(idx_bytes(fake_arrays[name]))
    np.testing.assert_array_equal(d2ltvm.load_fashion_mnist(local=local_copy).test_labels, [9, 0, 3, 3])
    write_idx_gz(local_copy / name, np.array([9, 0, 3, 4]))  # same shape, other contents
    with pytest.raises(ValueError, match=f"{local_copy / name} is not the original {name}: .* sha256"):
        d2ltvm.load_fashion_mnist(local=local_copy)
    (local_copy / name).write_bytes(b"plain text")
    with pytest.raises(ValueError, match=f"{local_copy / name} is not a gzip file"):
        d2ltvm.load_fashion_mnist(local=local_copy)
    (local_copy / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"{name} not found in {local_copy}"):
        d2ltvm.load_fashion_mnist(local=local_copy)


def test_original_files_in_a_local_folder(fashion):
    assert fashion.train_images.shape == (60000, 28, 28) and fashion.test_images.shape == (10000, 28, 28)
    assert np.bincount(fashion.train_labels).tolist() == [6000] * 10


def test_fashion_mnist_parsing(fake_fashion):
    arrays, calls = fake_fashion
    data = d2ltvm.load_fashion_mnist()
    assert data.name == "fashion_mnist" and data.classes[9] == "Ankle boot"
    assert data.train_images.shape == (6, 28, 28) and data.train_images.dtype == np.float32
    np.testing.assert_allclose(data.test_images * 255, arrays["t10k-images-idx3-ubyte.gz"], atol=1e-4)
    np.testing.assert_array_equal(data.test_labels, [9, 0, 3, 3])
    assert data.test_labels.dtype == np.int64
    assert len(calls) == 4 and all(alg == "md5" and len(md5) == 32 for _, md5, alg in calls)
    published = ["8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                 "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"]
    assert [md5 for _, md5, _ in calls] == published  # the checksums the authors publish
    assert all(url.startswith("http://fashion-mnist.s3-website") for url, _, _ in calls)


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


def test_train_mlp_is_deterministic_and_shaped(subset):
    x, y = subset.test_images[:200], subset.test_labels[:200]
    first = d2ltvm.train_mlp(x, y, hidden=16, epochs=2)
    second = d2ltvm.train_mlp(x, y, hidden=16, epochs=2)
    assert {k: v.shape for k, v in first.items()} == {"w0": (16, 784), "b0": (16,), "w1": (10, 16), "b1": (10,)}
    for k in first:
        assert first[k].dtype == np.float32
        np.testing.assert_array_equal(first[k], second[k])
    other = d2ltvm.train_mlp(x, y, hidden=16, epochs=2, seed=1)
    assert not np.array_equal(other["w0"], first["w0"])


def test_train_mlp_leaves_global_torch_state_alone(subset):
    import torch
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    d2ltvm.train_mlp(subset.test_images[:50], subset.test_labels[:50], hidden=8, epochs=1)
    assert torch.equal(torch.rand(3), expected) and torch.get_num_threads() == threads


def test_train_mlp_bad_input(subset):
    with pytest.raises(ValueError, match="N labels"):
        d2ltvm.train_mlp(subset.test_images[:10], subset.test_labels[:9])
    with pytest.raises(ValueError, match="integers from 0 to 9"):
        d2ltvm.train_mlp(subset.test_images[:10], np.full(10, 10))


def test_shipped_weights_accuracy_and_retraining_band(fashion):
    """Retraining with the chapter's recipe on all 60,000 images lands within the band of the shipped weights.

    Not byte for byte: PyTorch's kernels round differently on other CPUs, and training grows that.
    """
    def accuracy(params):
        scores = d2ltvm.numpy_mlp(fashion.test_images.reshape(-1, 784), **params)
        return (scores.argmax(axis=1) == fashion.test_labels).mean()

    assert abs(accuracy(d2ltvm.load_mlp_params()) - d2ltvm.MLP_TEST_ACCURACY) < 1e-3
    retrained = accuracy(d2ltvm.train_mlp(fashion.train_images, fashion.train_labels))
    assert abs(retrained - d2ltvm.MLP_TEST_ACCURACY) <= d2ltvm.MLP_ACCURACY_BAND, retrained
    # a changed recipe is caught: the old learning rate 0.1 with fewer epochs lands outside the band
    other = accuracy(d2ltvm.train_mlp(fashion.train_images, fashion.train_labels, epochs=2, lr=0.1))
    assert abs(other - d2ltvm.MLP_TEST_ACCURACY) > d2ltvm.MLP_ACCURACY_BAND, other


def test_shipped_weights_on_the_shipped_subset(subset):
    scores = d2ltvm.numpy_mlp(subset.test_images.reshape(-1, 784), **d2ltvm.load_mlp_params())
    assert 0.85 < (scores.argmax(axis=1) == subset.test_labels).mean() < 0.95


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
    broken = tmp_path / "mlp_fashion.npz"
    shutil.copy(d2ltvm.mlp_params_path(), broken)
    raw = bytearray(broken.read_bytes())
    raw[1000] ^= 0xFF
    broken.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="mlp_fashion.npz has sha256 .* corrupt .*make_mlp_weights.py"):
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
