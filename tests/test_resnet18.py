"""Unit tests of the helpers of chapters/compiling_models/resnet18.ipynb and of the model helpers
it uses from chapters/appendix/frameworks.ipynb (offline, fast), and of the chapter's claims."""
import hashlib
import io
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest
from PIL import Image

import d2ltvm

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def photo():
    return d2ltvm.load_sample_image()


@pytest.fixture
def mx():
    """MXNet, or a skip saying why it is unavailable (it has wheels for Linux only)."""
    try:
        return d2ltvm.import_mxnet()
    except d2ltvm.MXNetUnavailable as err:
        pytest.skip(f"MXNet unavailable: {err}")


# ---------------------------------------------------------------------------------------------
# imports, labels, sample image

def test_import_torchvision_gives_a_working_package():
    torchvision = d2ltvm.import_torchvision()
    assert torchvision.models.resnet18 is not None
    assert d2ltvm.import_torchvision() is torchvision  # idempotent


def test_import_mxnet_gives_a_working_package(mx):
    import torch
    threads = torch.get_num_threads()
    assert d2ltvm.import_mxnet() is mx
    assert mx.nd.ones((2,)).asnumpy().tolist() == [1.0, 1.0]
    assert torch.get_num_threads() == threads, "importing mxnet must not change PyTorch's threads"


# ---------------------------------------------------------------------------------------------
# without MXNet (macOS, Windows, or a Linux machine without it): simulated here

@pytest.fixture
def no_mxnet(monkeypatch):
    """Make `import mxnet` fail as it does where mxnet is not installed."""
    monkeypatch.setitem(sys.modules, "mxnet", None)


def test_import_mxnet_says_why_mxnet_is_missing(no_mxnet):
    with pytest.raises(d2ltvm.MXNetUnavailable) as info:
        d2ltvm.import_mxnet()
    message = str(info.value)
    assert isinstance(info.value, ImportError)
    assert f"not installed on this machine ({platform.system()} {platform.machine()})" in message
    assert "wheels for Linux (x86-64 and aarch64) only" in message


@pytest.mark.parametrize("system,advice", [("Linux", "`pip install mxnet==1.9.1` adds it"),
                                           ("Darwin", "requirements.txt therefore leaves it out")])
def test_import_mxnet_advice_depends_on_the_platform(no_mxnet, monkeypatch, system, advice):
    monkeypatch.setattr(platform, "system", lambda: system)
    pattern = re.escape(f"({system} ") + ".*" + re.escape(advice)
    with pytest.raises(d2ltvm.MXNetUnavailable, match=pattern):
        d2ltvm.import_mxnet()


def test_import_mxnet_reports_a_broken_installation(tmp_path, monkeypatch):
    """An installed mxnet whose native library does not load: a clear error, the cause chained."""
    fake = tmp_path / "mxnet"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise OSError('libmxnet.so: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [n for n in sys.modules if n == "mxnet" or n.startswith("mxnet.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(d2ltvm.MXNetUnavailable, match="installed but does not import") as info:
        d2ltvm.import_mxnet()
    assert "OSError: libmxnet.so: cannot open shared object file" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_mxnet_weights_without_mxnet_raise_the_same_error(no_mxnet, tmp_path):
    with pytest.raises(d2ltvm.MXNetUnavailable, match="not installed"):
        d2ltvm.load_mxnet_resnet18_v2(folder=tmp_path)


def chapter_cells(start, stop):
    """Return the sources of the resnet18 chapter's code cells from the one containing `start`
    to the last before the markdown heading `stop`."""
    import nbformat
    nb = nbformat.read(ROOT / "chapters" / "compiling_models" / "resnet18.ipynb", as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if start in c.source)
    last = next(i for i, c in enumerate(nb.cells) if i > first and stop in c.source)
    return [c.source for c in nb.cells[first:last] if c.cell_type == "code"]


def test_chapter_skips_its_mxnet_section_with_one_notice(no_mxnet, tmp_path, monkeypatch):
    """Run the chapter's MXNet section without MXNet: one notice, no error, workdir still made."""
    cells = chapter_cells("except MXNetUnavailable", "## Save and reload")
    assert len(cells) >= 5
    notice, rest = cells[0], cells[1:]
    marker, reason = notice.splitlines()[:2]
    assert marker == "# NBVAL_IGNORE_OUTPUT" and reason.startswith("# (")  # the notice may differ
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    namespace = dict(vars(d2ltvm), np=np, pathlib=pathlib, x=np.zeros((1, 3, 224, 224), "float32"))
    exec("import tempfile", namespace)
    printed = []
    for source in cells:
        out = io.StringIO()
        with redirect_stdout(out):
            exec(compile(source, "<cell>", "exec"), namespace)
        printed.append(out.getvalue())
    assert namespace["mx"] is None
    assert printed[0].startswith("notice: MXNet is not installed on this machine (")
    assert printed[0].endswith("The rest of this section is skipped.\n")
    assert printed[1:] == [""] * len(rest), "only the notice cell may print without MXNet"
    assert namespace["workdir"].is_dir()  # the rest of the chapter writes the compiled model there


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
    reference = d2ltvm.random_resnet18(0)
    for name, value in model.state_dict().items():
        assert value.equal(reference.state_dict()[name]), name
    bn = model.layer4[1].bn2  # untrained batch norms would be identities: these are not
    assert not bn.running_var.equal(torch.ones_like(bn.running_var))
    assert not bn.running_mean.equal(torch.zeros_like(bn.running_mean))
    assert not bn.weight.equal(torch.ones_like(bn.weight)) and not bn.bias.equal(torch.zeros_like(bn.bias))
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
    mx = d2ltvm.import_mxnet()  # the callers' fixture `mx` skips them where MXNet is missing
    mx.random.seed(seed)
    net = mx.gluon.model_zoo.vision.resnet18_v2()
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))  # materialize the deferred shapes
    scratch = folder / "scratch.params"
    net.save_parameters(str(scratch))
    sha1 = d2ltvm.file_hash(scratch, "sha1")
    scratch.rename(folder / f"resnet18_v2-{sha1[:8]}.params")
    return sha1, net


def test_mxnet_weights_from_a_cached_file(mx, tmp_path, offline, capsys):
    sha1, reference = fabricated_mxnet_params(tmp_path)
    net, pretrained = d2ltvm.load_mxnet_resnet18_v2(folder=tmp_path, sha1=sha1)
    assert pretrained is True
    expected = {k.split("_", 1)[1]: v.data().asnumpy() for k, v in reference.collect_params().items()}
    loaded = {k.split("_", 1)[1]: v.data().asnumpy() for k, v in net.collect_params().items()}
    assert expected.keys() == loaded.keys()
    for name in expected:
        np.testing.assert_array_equal(loaded[name], expected[name], err_msg=name)
    assert "notice" not in capsys.readouterr().out


def test_mxnet_corrupt_file_is_an_error(mx, tmp_path, offline):
    sha1, _ = fabricated_mxnet_params(tmp_path)
    path = tmp_path / f"resnet18_v2-{sha1[:8]}.params"
    path.write_bytes(b"\0" + path.read_bytes()[1:])
    with pytest.raises(d2ltvm.DownloadError, match="corrupt or a different file"):
        d2ltvm.load_mxnet_resnet18_v2(folder=tmp_path, sha1=sha1)


def test_mxnet_offline_without_cache_falls_back(mx, tmp_path, offline, capsys):
    net, pretrained = d2ltvm.load_mxnet_resnet18_v2(folder=tmp_path)
    assert pretrained is False
    out = capsys.readouterr().out
    assert "pretrained resnet18_v2 weights unavailable (offline)" in out and "meaningless" in out
    assert "unzip " + d2ltvm.MXNET_MODEL_ZOO + "resnet18_v2-a81db45f.zip into d2ltvm.cache_dir()" in out
    x = mx.nd.ones((1, 3, 64, 64))
    again, _ = d2ltvm.load_mxnet_resnet18_v2(folder=tmp_path)
    np.testing.assert_array_equal(net(x).asnumpy(), again(x).asnumpy())  # seeded
    variances = [p.data().asnumpy() for name, p in net.collect_params().items()
                 if name.endswith("_running_var")]  # untrained ones would all be 1
    assert variances and not any(np.array_equal(v, np.ones_like(v)) for v in variances)
    assert list(tmp_path.iterdir()) == []


def test_mxnet_online_path_uses_mxnets_downloader_then_verifies(mx, tmp_path, monkeypatch, capsys):
    """Online, a missing file is fetched by MXNet's downloader (faked here) and checked by d2ltvm.download."""
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


def test_mxnet_failed_download_falls_back(mx, tmp_path, monkeypatch, capsys):

    def failing_get_model_file(name, root):
        raise OSError("network unreachable")

    monkeypatch.setenv("D2LTVM_OFFLINE", "0")
    monkeypatch.setattr(mx.gluon.model_zoo.model_store, "get_model_file", failing_get_model_file)
    net, pretrained = d2ltvm.load_mxnet_resnet18_v2(folder=tmp_path)
    assert pretrained is False
    out = capsys.readouterr().out
    assert "could not download" in out and "OSError: network unreachable" in out and "meaningless" in out


def test_published_mxnet_checksum_matches_mxnet(mx):
    assert mx.gluon.model_zoo.model_store._model_sha1["resnet18_v2"] == d2ltvm.MXNET_RESNET18_V2_SHA1
    assert mx.gluon.model_zoo.model_store.apache_repo_url + "gluon/models/" == d2ltvm.MXNET_MODEL_ZOO


# ---------------------------------------------------------------------------------------------
# compiled model: save, reload in this process and in a fresh one

@pytest.fixture(scope="module")
def relax_resnet18():
    """The fallback ResNet-18 (seeded random weights and batch norms) imported into Relax."""
    import torch
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    model = d2ltvm.random_resnet18(0)
    x = d2ltvm.image_preprocessing(d2ltvm.load_sample_image())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        with torch.no_grad():
            exported = torch.export.export(model, (torch.zeros(1, 3, 224, 224),))
            expected = model(torch.from_numpy(x)).numpy()
        mod = from_exported_program(exported, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    mod, params = relax.frontend.detach_params(mod)
    return {"model": model, "mod": mod, "weights": params["main"], "x": x, "expected": expected}


@pytest.fixture(scope="module")
def compiled(relax_resnet18, tmp_path_factory):
    """ResNet-18 with seeded random weights, compiled once, saved; with an input and TVM's output."""
    import tvm
    from tvm import relax

    mod, weights, x = relax_resnet18["mod"], relax_resnet18["weights"], relax_resnet18["x"]
    executable = d2ltvm.compile_model(mod)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    logits = vm["main"](tvm.runtime.tensor(x), *weights).numpy()
    np.testing.assert_allclose(logits, relax_resnet18["expected"], rtol=1e-4, atol=1e-4)
    folder = tmp_path_factory.mktemp("deploy")
    paths = d2ltvm.export_compiled_model(executable, weights, folder, name="resnet18")
    return {"folder": folder, "paths": paths, "x": x, "logits": logits, "executable": executable,
            "weights": weights, "names": [v.name for v in mod["main"].params]}


def count_constants(module):
    import tvm
    from tvm import relax
    found = set()
    for func in module.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(
                func, lambda e: found.add(e) if isinstance(e, tvm.ir.GenericConst) else None)
    return len(found)


def test_inference_pipeline_fuses_batch_norm_into_the_convolutions(relax_resnet18):
    """The chapter's claim: decomposed batch norms (and the ReLUs after them) fuse: 28 -> 20."""
    from tvm import relax
    mod = relax_resnet18["mod"]
    plain = d2ltvm.tensorir_functions(relax.get_pipeline("zero")(mod))
    ours = d2ltvm.tensorir_functions(d2ltvm.inference_pipeline()(mod))
    assert (len(plain), len(ours)) == (28, 20)
    assert any("batch_norm" in k for k in plain) and not any("batch_norm" in k for k in ours)
    convolutions = [k for k in ours if "conv2d" in k]
    assert convolutions and all("subtract" in k and "multiply" in k for k in convolutions)
    assert not [k for k in ours if k.startswith(("fused_relu", "fused_add", "relu", "add"))]
    assert sum("relu" in k for k in convolutions) == 12


def test_bound_weights_fold_batch_norm_into_the_convolutions(relax_resnet18):
    """The chapter's claim: 62 weights + 40 running statistics = 102 constants become 42."""
    import tvm
    from tvm import relax
    mod, weights = relax_resnet18["mod"], relax_resnet18["weights"]
    names = [v.name for v in mod["main"].params[1:]]
    bound = relax.transform.BindParams("main", dict(zip(names, weights)))(mod)
    folded = relax.transform.FoldConstant()(relax.transform.FoldBatchnormToConv2D()(bound))
    assert (len(weights), count_constants(mod)) == (62, 40)
    assert (count_constants(bound), count_constants(folded)) == (102, 42)
    assert "R.nn.batch_norm(" not in folded["main"].script()
    vm = relax.VirtualMachine(d2ltvm.compile_model(folded), tvm.cpu())
    logits = vm["main"](tvm.runtime.tensor(relax_resnet18["x"])).numpy()
    np.testing.assert_allclose(logits, relax_resnet18["expected"], rtol=1e-4, atol=1e-4)


def test_onnx_initializers_listed_as_inputs_double_the_arguments():
    """The chapter's claim about MXNet's ONNX export, on a one-node graph: a weight that is both
    an initializer and a graph input becomes two arguments; removed from the inputs, one."""
    import onnx
    from onnx import TensorProto, helper
    from tvm.relax.frontend.onnx import from_onnx
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("data", "w")]
    graph = helper.make_graph([helper.make_node("Add", ["data", "w"], ["y"])], "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    doubled = from_onnx(model, shape_dict={"data": [2]}, keep_params_in_input=True)
    assert [v.name for v in doubled["main"].params] == ["data", "w", "w"]
    del model.graph.input[1:]
    fixed = from_onnx(model, shape_dict={"data": [2]}, keep_params_in_input=True)
    assert [v.name for v in fixed["main"].params] == ["data", "w"]


def test_export_writes_three_files(compiled):
    library, params = compiled["paths"]
    assert sorted(p.name for p in compiled["folder"].iterdir()) == [
        "resnet18.manifest.json", "resnet18.params", "resnet18.so"]
    assert library.stat().st_size > 100_000
    assert params.stat().st_size > 11_000_000 * 4  # the weights are in .params ...
    assert library.stat().st_size < 5_000_000  # ... not in the library


def test_manifest_records_sizes_and_checksums(compiled):
    manifest = json.loads((compiled["folder"] / "resnet18.manifest.json").read_text())
    assert sorted(manifest["files"]) == ["resnet18.params", "resnet18.so"]
    for path in compiled["paths"]:
        record = manifest["files"][path.name]
        assert record["bytes"] == path.stat().st_size
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


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
    d2ltvm.write_model_manifest(tmp_path, "mixed", [tmp_path / "mixed.so",
                                                    tmp_path / "mixed.params"])
    with pytest.raises(d2ltvm.CompiledModelError, match="do not belong together"):
        d2ltvm.load_compiled_model(tmp_path, name="mixed")


# ---------------------------------------------------------------------------------------------
# damaged exports: refused with a clear error before the library reaches dlopen

LOAD = """
import json, sys
import d2ltvm
for folder in sys.argv[1:]:
    try:
        d2ltvm.load_compiled_model(folder, name="resnet18")
        print(json.dumps({"error": None}), flush=True)
    except Exception as err:
        print(json.dumps({"error": type(err).__name__, "message": str(err)}), flush=True)
"""


def load_in_a_subprocess(*folders):
    """Try load_compiled_model on each folder in one fresh process; return what each reported.
    A regression that lets a damaged library reach dlopen kills that process (bus error), not
    pytest: the folder it was loading and those after it are then reported as crashed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", LOAD, *map(str, folders)], capture_output=True,
                            text=True, timeout=300, env=env)
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    crash = {"error": f"crashed with exit code {result.returncode}",
             "message": result.stderr[-2000:]}
    return reports + [crash] * (len(folders) - len(reports))


def damage_library(library, damage):
    content = bytearray(library.read_bytes())
    if damage == "truncated":  # as an interrupted copy leaves it
        content = content[:len(content) // 2]
    elif damage == "flipped":
        content[len(content) // 2] ^= 0xFF
    elif damage == "appended":
        content += b"\0"
    library.write_bytes(bytes(content))


DAMAGES = {
    "truncated": r"resnet18.so is truncated: it has [\d,]+ bytes, the manifest records [\d,]+ "
                 r"bytes \(size mismatch\)",
    "flipped": r"resnet18.so is damaged: .*\(checksum mismatch\)",
    "appended": r"resnet18.so is longer than written: .*\(size mismatch\)",
}


@pytest.fixture(scope="module")
def damaged_exports(compiled, tmp_path_factory):
    """Copies of the export with a damaged library, and one intact; loaded in one subprocess."""
    folders = {}
    for damage in list(DAMAGES) + ["intact"]:
        folder = tmp_path_factory.mktemp(damage) / "copy"
        shutil.copytree(compiled["folder"], folder)
        damage_library(folder / "resnet18.so", damage)
        folders[damage] = folder
    reports = load_in_a_subprocess(*folders.values())
    return {damage: (folder, report) for (damage, folder), report in zip(folders.items(), reports)}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_library_is_refused(damaged_exports, damage):
    folder, reported = damaged_exports[damage]
    assert reported["error"] == "CompiledModelError", reported
    assert re.search(DAMAGES[damage], reported["message"]), reported["message"]
    assert str(folder / "resnet18.so") in reported["message"]  # names the file, with its full path


def test_intact_copy_loads_in_a_subprocess(damaged_exports):
    assert damaged_exports["intact"][1] == {"error": None}


def copy_of_export(compiled, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(compiled["folder"], folder)
    return folder


def test_flipped_byte_in_the_weights_is_refused(compiled, tmp_path):
    folder = copy_of_export(compiled, tmp_path)
    params = folder / "resnet18.params"
    content = bytearray(params.read_bytes())
    content[-5] ^= 0x01  # in the last weight's data: still a well-formed file
    params.write_bytes(bytes(content))
    with pytest.raises(d2ltvm.CompiledModelError, match=r"resnet18.params is damaged.*checksum"):
        d2ltvm.load_compiled_model(folder, name="resnet18")


def test_missing_manifest_is_refused(compiled, tmp_path):
    folder = copy_of_export(compiled, tmp_path)
    (folder / "resnet18.manifest.json").unlink()
    with pytest.raises(d2ltvm.CompiledModelError, match=r"resnet18.manifest.json is missing"):
        d2ltvm.load_compiled_model(folder, name="resnet18")


@pytest.mark.parametrize("text", ["{not json", "[]", '{"files": {}}',
                                  '{"files": {"resnet18.so": {"bytes": "many"}}}'])
def test_damaged_manifest_is_refused(compiled, tmp_path, text):
    folder = copy_of_export(compiled, tmp_path)
    (folder / "resnet18.manifest.json").write_text(text)
    with pytest.raises(d2ltvm.CompiledModelError, match=r"manifest.json is damaged or does not "
                                                        r"describe resnet18.so, resnet18.params"):
        d2ltvm.load_compiled_model(folder, name="resnet18")


@pytest.mark.parametrize("missing", ["resnet18.so", "resnet18.params"])
def test_missing_file_is_refused(compiled, tmp_path, missing):
    folder = copy_of_export(compiled, tmp_path)
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=f"{missing} does not exist"):
        d2ltvm.load_compiled_model(folder, name="resnet18")
    with pytest.raises(d2ltvm.CompiledModelError, match=f"{missing} is missing"):
        d2ltvm.verify_model_files(folder, "resnet18", ["resnet18.so", "resnet18.params"])


def test_good_copy_round_trips(compiled, tmp_path):
    import tvm
    folder = copy_of_export(compiled, tmp_path)
    d2ltvm.verify_model_files(folder, "resnet18", ["resnet18.so", "resnet18.params"])
    vm, weights = d2ltvm.load_compiled_model(folder, name="resnet18")
    logits = vm["main"](tvm.runtime.tensor(compiled["x"]), *weights).numpy()
    np.testing.assert_array_equal(logits, compiled["logits"])


def test_reexport_rewrites_the_manifest(compiled, tmp_path):
    folder = copy_of_export(compiled, tmp_path)
    (folder / "resnet18.manifest.json").write_text("{}")
    d2ltvm.export_compiled_model(compiled["executable"], compiled["weights"], folder,
                                 name="resnet18")
    d2ltvm.verify_model_files(folder, "resnet18", ["resnet18.so", "resnet18.params"])


def test_export_refuses_too_many_weights(compiled, tmp_path):
    with pytest.raises(ValueError, match="cannot take"):
        d2ltvm.export_compiled_model(compiled["executable"], list(compiled["weights"]) * 2, tmp_path)
