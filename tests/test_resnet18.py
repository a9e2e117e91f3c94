"""Unit tests of the helpers of chapters/compiling_models/resnet18.ipynb (offline, fast)."""
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

import d2ltvm

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def photo():
    return d2ltvm.load_sample_image()


# ---------------------------------------------------------------------------------------------
# imports, labels, sample image

def test_import_helpers_give_working_packages():
    torchvision = d2ltvm.import_torchvision()
    assert torchvision.models.resnet18 is not None
    import torch
    threads = torch.get_num_threads()
    mx = d2ltvm.import_mxnet()
    assert mx.nd.ones((2,)).asnumpy().tolist() == [1.0, 1.0]
    assert torch.get_num_threads() == threads, "importing mxnet must not change PyTorch's threads"
    assert d2ltvm.import_torchvision() is torchvision  # idempotent


def test_imagenet_labels():
    labels = d2ltvm.imagenet_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[0] == "tench" and labels[281] == "tabby" and labels[282] == "tiger cat"


def test_sample_image():
    image = d2ltvm.load_sample_image()
    assert image.mode == "RGB" and image.size == (512, 600)


def test_top_predictions():
    labels = ["a", "b", "c", "d"]
    top = d2ltvm.top_predictions(np.array([[0.0, 2.0, 1.0, 0.0]]), labels, k=2)
    assert [label for label, _ in top] == ["b", "c"]
    expected = np.exp(2) / (np.exp(2) + np.exp(1) + 2)
    assert top[0][1] == pytest.approx(expected)
    with pytest.raises(ValueError, match="3 scores for 4 labels"):
        d2ltvm.top_predictions(np.zeros(3), labels)


# ---------------------------------------------------------------------------------------------
# image_preprocessing

def test_preprocessing_matches_torchvision_transform(photo):
    torchvision = d2ltvm.import_torchvision()
    transform = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    for image in [photo, photo.resize((300, 200)), photo.crop((0, 0, 500, 240))]:
        x = d2ltvm.image_preprocessing(image)
        np.testing.assert_allclose(x[0], transform(image).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(224, 224), (640, 480), (480, 640), (1000, 10), (1, 1), (257, 255)])
def test_preprocessing_shape_and_type(photo, size):
    x = d2ltvm.image_preprocessing(photo.resize(size))
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32 and x.flags.c_contiguous
    assert np.isfinite(x).all()


def test_preprocessing_normalizes_with_imagenet_statistics():
    gray = Image.new("RGB", (300, 300), (124, 116, 104))  # about the ImageNet mean color
    x = d2ltvm.image_preprocessing(gray)
    expected = (np.array([124, 116, 104]) / 255 - np.array(d2ltvm.IMAGENET_MEAN)) / np.array(d2ltvm.IMAGENET_STD)
    np.testing.assert_allclose(x[0, :, 100, 100], expected, atol=1e-6)
    white = d2ltvm.image_preprocessing(Image.new("RGB", (10, 10), (255, 255, 255)))
    np.testing.assert_allclose(white[0, :, 0, 0], (1 - np.array(d2ltvm.IMAGENET_MEAN)) / np.array(d2ltvm.IMAGENET_STD),
                               atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr"])
def test_preprocessing_converts_color_modes(photo, mode):
    converted = photo.convert(mode)
    x = d2ltvm.image_preprocessing(converted)
    np.testing.assert_array_equal(x, d2ltvm.image_preprocessing(converted.convert("RGB")))


def test_grayscale_gives_three_equal_channels(photo):
    x = d2ltvm.image_preprocessing(photo.convert("L"))
    raw = x * np.array(d2ltvm.IMAGENET_STD, "float32")[:, None, None] + np.array(d2ltvm.IMAGENET_MEAN, "float32")[:, None, None]
    np.testing.assert_allclose(raw[0, 0], raw[0, 1], atol=1e-6)
    np.testing.assert_allclose(raw[0, 1], raw[0, 2], atol=1e-6)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_transparency_is_composited_over_white(mode):
    image = Image.new("RGBA", (50, 40), (255, 0, 0, 255))
    image.paste((0, 0, 255, 0), (0, 0, 50, 20))  # top half: fully transparent blue
    image = image.convert(mode)
    x = d2ltvm.image_preprocessing(image, size=16, resize=16)
    white = (1 - np.array(d2ltvm.IMAGENET_MEAN)) / np.array(d2ltvm.IMAGENET_STD)
    np.testing.assert_allclose(x[0, :, 0, 8], white, atol=1e-6)  # transparent pixels become white
    assert not np.allclose(x[0, :, 15, 8], white)  # opaque ones keep their color


def test_palette_with_transparency_is_composited():
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    x = d2ltvm.image_preprocessing(image, size=8, resize=8)
    white = (1 - np.array(d2ltvm.IMAGENET_MEAN)) / np.array(d2ltvm.IMAGENET_STD)
    np.testing.assert_allclose(x[0, :, 3, 3], white, atol=1e-6)


def test_uint8_arrays(photo):
    pixels = np.asarray(photo)
    np.testing.assert_array_equal(d2ltvm.image_preprocessing(pixels), d2ltvm.image_preprocessing(photo))
    np.testing.assert_array_equal(d2ltvm.image_preprocessing(pixels[:, :, 0]),
                                  d2ltvm.image_preprocessing(pixels[:, :, :1]))
    rgba = np.concatenate([pixels, np.full(pixels.shape[:2] + (1,), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(d2ltvm.image_preprocessing(rgba), d2ltvm.image_preprocessing(photo))


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_precision_modes_are_refused(photo, mode):
    with pytest.raises(ValueError, match=f"image mode '{mode}' is not supported"):
        d2ltvm.image_preprocessing(photo.convert("L").convert(mode))


@pytest.mark.parametrize("bad,error,message", [
    ([[0, 1], [2, 3]], TypeError, "expected a PIL image or a numpy uint8 array, got list"),
    ("photo.jpg", TypeError, "got str"),
    (None, TypeError, "got NoneType"),
    (np.zeros((8, 8, 3), "float32"), ValueError, "dtype float32"),
    (np.zeros((8, 8, 2), "uint8"), ValueError, r"got \(8, 8, 2\)"),
    (np.zeros((2, 8, 8, 3), "uint8"), ValueError, r"got \(2, 8, 8, 3\)"),
    (np.zeros((0, 8, 3), "uint8"), ValueError, "no pixels"),
    (Image.new("RGB", (0, 5)), ValueError, "no pixels"),
])
def test_bad_input_is_refused_clearly(bad, error, message):
    with pytest.raises(error, match=message):
        d2ltvm.image_preprocessing(bad)


def test_torch_tensor_is_refused(photo):
    import torch
    with pytest.raises(TypeError, match="got Tensor"):
        d2ltvm.image_preprocessing(torch.zeros(3, 8, 8))


@pytest.mark.parametrize("size,resize", [(256, 224), (0, 256), (224.0, 256)])
def test_bad_sizes_are_refused(photo, size, resize):
    with pytest.raises(ValueError, match="0 < size <= resize"):
        d2ltvm.image_preprocessing(photo, size=size, resize=resize)


# ---------------------------------------------------------------------------------------------
# weight loading without network

@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("D2LTVM_OFFLINE", "1")


def fabricated_torch_checkpoint(folder, seed=123):
    """Save a randomly initialized ResNet-18 state dict; return (url, sha256, state dict)."""
    import torch
    models = d2ltvm.import_torchvision().models
    torch.manual_seed(seed)
    state = models.resnet18(weights=None).state_dict()
    path = folder / "resnet18-test.pth"
    torch.save(state, path)
    return "https://example.invalid/models/resnet18-test.pth", d2ltvm.file_hash(path), state


def test_torch_weights_from_a_cached_checkpoint(tmp_path, offline, capsys):
    url, digest, state = fabricated_torch_checkpoint(tmp_path)
    for checksum in (digest, digest[:8]):  # a full digest and a published-style prefix
        model, pretrained = d2ltvm.load_resnet18(folder=tmp_path, url=url, checksum=checksum)
        assert pretrained is True and not model.training
        for name, value in model.state_dict().items():
            assert value.equal(state[name]), name
    assert "notice" not in capsys.readouterr().out


def test_torch_corrupt_checkpoint_is_an_error(tmp_path, offline):
    url, digest, _ = fabricated_torch_checkpoint(tmp_path)
    path = tmp_path / "resnet18-test.pth"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(d2ltvm.DownloadError, match="corrupt or a different file"):
        d2ltvm.load_resnet18(folder=tmp_path, url=url, checksum=digest)


def test_torch_checkpoint_with_wrong_content_is_an_error(tmp_path, offline):
    path = tmp_path / "resnet18-test.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="expected checksum but is not a ResNet-18 state dict"):
        d2ltvm.load_resnet18(folder=tmp_path, url="https://example.invalid/resnet18-test.pth",
                             checksum=d2ltvm.file_hash(path))


def test_torch_offline_without_cache_falls_back(tmp_path, offline, capsys):
    import torch
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    model, pretrained = d2ltvm.load_resnet18(folder=tmp_path)
    assert torch.rand(1).equal(before), "the fallback must not disturb the caller's random state"
    assert pretrained is False
    out = capsys.readouterr().out
    assert "pretrained ResNet-18 weights unavailable (offline)" in out and "meaningless" in out
    assert "save https://download.pytorch.org/models/resnet18-f37072fd.pth into d2ltvm.cache_dir()" in out
    again, _ = d2ltvm.load_resnet18(folder=tmp_path)
    other, _ = d2ltvm.load_resnet18(folder=tmp_path, seed=1)
    assert model.conv1.weight.equal(again.conv1.weight)  # seeded: the same weights every time
    assert not model.conv1.weight.equal(other.conv1.weight)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_torch_failed_download_falls_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("D2LTVM_OFFLINE", "0")
    missing = (tmp_path / "server" / "resnet18-test.pth").as_uri()  # a URL that cannot be read
    model, pretrained = d2ltvm.load_resnet18(folder=tmp_path / "cache", url=missing, checksum="0" * 64)
    assert pretrained is False
    assert "could not download resnet18-test.pth" in capsys.readouterr().out


def fabricated_mxnet_params(folder, seed=5):
    """Save initialized resnet18_v2 parameters under the model-zoo name; return (sha1, net)."""
    mx = d2ltvm.import_mxnet()
    mx.random.seed(seed)
    net = mx.gluon.model_zoo.vision.resnet18_v2()
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))  # materialize the deferred shapes
    scratch = folder / "scratch.params"
    net.save_parameters(str(scratch))
    sha1 = d2ltvm.file_hash(scratch, "sha1")
    scratch.rename(folder / f"resnet18_v2-{sha1[:8]}.params")
    return sha1, net


def test_mxnet_weights_from_a_cached_file(tmp_path, offline, capsys):
    sha1, reference = fabricated_mxnet_params(tmp_path)
    net, pretrained = d2ltvm.load_mxnet_resnet18_v2(folder=tmp_path, sha1=sha1)
    assert pretrained is True
    expected = {k.split("_", 1)[1]: v.data().asnumpy() for k, v in reference.collect_params().items()}
    loaded = {k.split("_", 1)[1]: v.data().asnumpy() for k, v in net.collect_params().items()}
    assert expected.keys() == loaded.keys()
    for name in expected:
        np.testing.assert_array_equal(loaded[name], expected[name], err_msg=name)
    assert "notice" not in capsys.readouterr().out


def test_mxnet_corrupt_file_is_an_error(tmp_path, offline):
    sha1, _ = fabricated_mxnet_params(tmp_path)
    path = tmp_path / f"resnet18_v2-{sha1[:8]}.params"
    path.write_bytes(b"\0" + path.read_bytes()[1:])
    with pytest.raises(d2ltvm.DownloadError, match="corrupt or a different file"):
        d2ltvm.load_mxnet_resnet18_v2(folder=tmp_path, sha1=sha1)


def test_mxnet_offline_without_cache_falls_back(tmp_path, offline, capsys):
    mx = d2ltvm.import_mxnet()
    net, pretrained = d2ltvm.load_mxnet_resnet18_v2(folder=tmp_path)
    assert pretrained is False
    out = capsys.readouterr().out
    assert "pretrained resnet18_v2 weights unavailable (offline)" in out and "meaningless" in out
    assert "unzip " + d2ltvm.MXNET_MODEL_ZOO + "resnet18_v2-a81db45f.zip into d2ltvm.cache_dir()" in out
    x = mx.nd.ones((1, 3, 64, 64))
    again, _ = d2ltvm.load_mxnet_resnet18_v2(folder=tmp_path)
    np.testing.assert_array_equal(net(x).asnumpy(), again(x).asnumpy())  # seeded
    assert list(tmp_path.iterdir()) == []


def test_mxnet_online_path_uses_mxnets_downloader_then_verifies(tmp_path, monkeypatch, capsys):
    """Online, a missing file is fetched by MXNet's downloader (faked here) and checked by d2ltvm.download."""
    mx = d2ltvm.import_mxnet()
    source = tmp_path / "server"
    source.mkdir()
    sha1, _ = fabricated_mxnet_params(source)
    calls = []

    def fake_get_model_file(name, root):
        calls.append(name)
        (pathlib.Path(root)).mkdir(parents=True, exist_ok=True)
        target = pathlib.Path(root) / f"resnet18_v2-{sha1[:8]}.params"
        target.write_bytes((source / target.name).read_bytes())
        return str(target)

    monkeypatch.setenv("D2LTVM_OFFLINE", "0")
    monkeypatch.setattr(mx.gluon.model_zoo.model_store, "get_model_file", fake_get_model_file)
    net, pretrained = d2ltvm.load_mxnet_resnet18_v2(folder=tmp_path / "cache", sha1=sha1)
    assert pretrained is True and calls == ["resnet18_v2"]
    assert "notice" not in capsys.readouterr().out


def test_mxnet_failed_download_falls_back(tmp_path, monkeypatch, capsys):
    mx = d2ltvm.import_mxnet()

    def failing_get_model_file(name, root):
        raise OSError("network unreachable")

    monkeypatch.setenv("D2LTVM_OFFLINE", "0")
    monkeypatch.setattr(mx.gluon.model_zoo.model_store, "get_model_file", failing_get_model_file)
    net, pretrained = d2ltvm.load_mxnet_resnet18_v2(folder=tmp_path)
    assert pretrained is False
    out = capsys.readouterr().out
    assert "could not download" in out and "OSError: network unreachable" in out and "meaningless" in out


def test_published_mxnet_checksum_matches_mxnet():
    mx = d2ltvm.import_mxnet()
    assert mx.gluon.model_zoo.model_store._model_sha1["resnet18_v2"] == d2ltvm.MXNET_RESNET18_V2_SHA1
    assert mx.gluon.model_zoo.model_store.apache_repo_url + "gluon/models/" == d2ltvm.MXNET_MODEL_ZOO


# ---------------------------------------------------------------------------------------------
# compiled model: save, reload in this process and in a fresh one

@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """ResNet-18 with seeded random weights, compiled once, saved; with an input and TVM's output."""
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    models = d2ltvm.import_torchvision().models
    torch.manual_seed(0)
    model = models.resnet18(weights=None).eval()
    x = d2ltvm.image_preprocessing(d2ltvm.load_sample_image())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        with torch.no_grad():
            exported = torch.export.export(model, (torch.from_numpy(x),))
            expected = model(torch.from_numpy(x)).numpy()
        mod = from_exported_program(exported, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    mod, params = relax.frontend.detach_params(mod)
    executable = tvm.compile(relax.get_pipeline("zero")(mod), target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    logits = vm["main"](tvm.runtime.tensor(x), *params["main"]).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    folder = tmp_path_factory.mktemp("deploy")
    paths = d2ltvm.export_compiled_model(executable, params["main"], folder, name="resnet18")
    return {"folder": folder, "paths": paths, "x": x, "logits": logits, "executable": executable,
            "weights": params["main"], "names": [v.name for v in mod["main"].params]}


def test_export_writes_two_files(compiled):
    library, params = compiled["paths"]
    assert sorted(p.name for p in compiled["folder"].iterdir()) == ["resnet18.params", "resnet18.so"]
    assert library.stat().st_size > 100_000
    assert params.stat().st_size > 11_000_000 * 4  # the weights are in .params ...
    assert library.stat().st_size < 5_000_000  # ... not in the library


def test_argument_names_are_mains(compiled):
    assert d2ltvm.main_argument_names(compiled["executable"]) == compiled["names"]


def test_export_hides_scope_logs(compiled, tmp_path, capfd):
    d2ltvm.export_compiled_model(compiled["executable"], compiled["weights"], tmp_path, name="again")
    d2ltvm.load_compiled_model(tmp_path, name="again")
    err = capfd.readouterr().err
    assert "Scope Saving" not in err and "Scope Loaded" not in err


def test_hide_tvm_scope_logs_passes_other_lines(capfd):
    with d2ltvm.hide_tvm_scope_logs():
        os.write(2, b"[00:00:00] executable.cc:276: Warning: Scope Saving:\nsomething else\n")
    assert capfd.readouterr().err == "something else\n"


def test_reload_in_this_process_is_bit_identical(compiled):
    import tvm
    vm, weights = d2ltvm.load_compiled_model(compiled["folder"], name="resnet18")
    assert len(weights) == len(compiled["weights"])
    logits = vm["main"](tvm.runtime.tensor(compiled["x"]), *weights).numpy()
    np.testing.assert_array_equal(logits, compiled["logits"])


FRESH = """
import json, sys
import numpy as np
import tvm
import d2ltvm
folder, out = sys.argv[1], sys.argv[2]
vm, weights = d2ltvm.load_compiled_model(folder, name="resnet18")
x = np.load(folder + "/../x.npy")
np.save(out, vm["main"](tvm.runtime.tensor(x), *weights).numpy())
print(json.dumps({"torchvision": "torchvision" in sys.modules, "mxnet": "mxnet" in sys.modules}))
"""


def test_reload_in_a_fresh_process(compiled, tmp_path):
    np.save(compiled["folder"].parent / "x.npy", compiled["x"])
    out = tmp_path / "logits.npy"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", FRESH, str(compiled["folder"]), str(out)],
                            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Scope" not in result.stderr
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert modules == {"torchvision": False, "mxnet": False}
    np.testing.assert_array_equal(np.load(out), compiled["logits"])


def test_load_reports_missing_and_mismatched_files(compiled, tmp_path):
    with pytest.raises(FileNotFoundError, match="resnet50.so does not exist"):
        d2ltvm.load_compiled_model(compiled["folder"], name="resnet50")
    import tvm
    (tmp_path / "mixed.so").write_bytes(compiled["paths"][0].read_bytes())
    tvm.runtime.save_param_dict_to_file({"something": tvm.runtime.tensor(np.zeros(2, "float32"))},
                                        str(tmp_path / "mixed.params"))
    with pytest.raises(ValueError, match="do not belong together"):
        d2ltvm.load_compiled_model(tmp_path, name="mixed")


def test_export_refuses_too_many_weights(compiled, tmp_path):
    with pytest.raises(ValueError, match="cannot take"):
        d2ltvm.export_compiled_model(compiled["executable"], list(compiled["weights"]) * 2, tmp_path)
