"""The hand-written torch.fx translator (chapters/relax/blockbuilder_fx.ipynb) against PyTorch."""
import numpy as np
import pytest
import torch
import tvm
from tvm import relax

import d2ltvm

STYLES = {"te": d2ltvm.te_fx_maps, "op": d2ltvm.op_fx_maps}


def run(mod, *inputs):
    vm = relax.VirtualMachine(tvm.compile(mod, target=d2ltvm.host_target()), tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(x.numpy()) for x in inputs)).numpy()


class MatmulRelu(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(16, 8))

    def forward(self, x):
        return torch.relu(torch.matmul(x, self.weight))


class MLP(torch.nn.Module):
    def __init__(self, bias=True):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10, bias=bias),
                                        torch.nn.ReLU(), torch.nn.Linear(10, 3, bias=bias))

    def forward(self, x):
        return self.body(x)


class Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 6)

    def forward(self, x):
        h = torch.flatten(x, 1)
        return torch.add(h + torch.relu(self.fc(h)), 2.0) + 1.5


class FlattenMiddle(torch.nn.Module):
    def forward(self, x, y):
        return torch.flatten(x, start_dim=1, end_dim=2) + y


CASES = [
    (MatmulRelu, [(4, 16)]),
    (MLP, [(5, 3, 4)]),
    (lambda: MLP(bias=False), [(1, 12)]),
    (Residual, [(2, 2, 3)]),
    (FlattenMiddle, [(2, 3, 4, 5), (2, 12, 5)]),
]


@pytest.mark.parametrize("style", sorted(STYLES))
@pytest.mark.parametrize("make,shapes", CASES,
                         ids=["matmul_relu", "mlp", "mlp_no_bias", "residual", "two_inputs"])
def test_translator_matches_torch(style, make, shapes):
    torch.manual_seed(0)
    model = make().eval()
    inputs = [torch.randn(*s) for s in shapes]
    mod = d2ltvm.from_fx(torch.fx.symbolic_trace(model), shapes, *STYLES[style]())
    with torch.no_grad():
        expected = model(*inputs).numpy()
    np.testing.assert_allclose(run(mod, *inputs), expected, rtol=1e-5, atol=1e-5)


def test_parameters_become_constants():
    mod = d2ltvm.from_fx(torch.fx.symbolic_trace(MLP()), [(1, 12)], *d2ltvm.op_fx_maps())
    assert len(mod["main"].params) == 1, "only the data is an input; weights are constants"


def test_te_style_emits_primfuncs_and_op_style_does_not():
    fx_module = torch.fx.symbolic_trace(MLP())
    te_mod = d2ltvm.from_fx(fx_module, [(1, 12)], *d2ltvm.te_fx_maps())
    op_mod = d2ltvm.from_fx(fx_module, [(1, 12)], *d2ltvm.op_fx_maps())
    assert any(isinstance(f, tvm.tirx.PrimFunc) for f in te_mod.functions.values())
    assert not any(isinstance(f, tvm.tirx.PrimFunc) for f in op_mod.functions.values())


def test_unmapped_function_is_named():
    class Sig(torch.nn.Module):
        def forward(self, x):
            return torch.sigmoid(x)
    message = r"no translation rule for function torch\.sigmoid .*'sigmoid'"
    with pytest.raises(NotImplementedError, match=message):
        d2ltvm.from_fx(torch.fx.symbolic_trace(Sig()), [(1, 4)], *d2ltvm.te_fx_maps())


def test_unmapped_module_is_named():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
    message = r"module '1' of type torch\.nn\.modules\.activation\.GELU"
    with pytest.raises(NotImplementedError, match=message):
        d2ltvm.from_fx(torch.fx.symbolic_trace(model), [(1, 4)], *d2ltvm.op_fx_maps())


def test_call_method_is_refused_clearly():
    class View(torch.nn.Module):
        def forward(self, x):
            return x.view(-1)
    with pytest.raises(NotImplementedError, match="fx opcode 'call_method'.*'view'"):
        d2ltvm.from_fx(torch.fx.symbolic_trace(View()), [(2, 2)], *d2ltvm.op_fx_maps())


def test_wrong_number_of_input_shapes():
    with pytest.raises(ValueError, match=r"takes 2 input\(s\) \(x, y\), but 1 shape"):
        d2ltvm.from_fx(torch.fx.symbolic_trace(FlattenMiddle()), [(2, 3, 4, 5)],
                       *d2ltvm.op_fx_maps())


def test_te_matmul_and_relu():
    from tvm import te
    A = te.placeholder((3, 4), name="A")
    B = te.placeholder((4, 5), name="B")
    C = d2ltvm.te_matmul(A, B)
    D = d2ltvm.te_relu(C)
    mod = tvm.IRModule({"main": te.create_prim_func([A, B, D])})
    f = tvm.compile(mod, target=d2ltvm.host_target())["main"]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype("float32")
    b = rng.standard_normal((4, 5)).astype("float32")
    d = tvm.runtime.tensor(np.zeros((3, 5), "float32"))
    f(tvm.runtime.tensor(a), tvm.runtime.tensor(b), d)
    np.testing.assert_allclose(d.numpy(), np.maximum(a @ b, 0), rtol=1e-5, atol=1e-6)
    assert (d.numpy() == 0).any() and (d.numpy() > 0).any()


@pytest.mark.parametrize("a_shape, b_shape",
                         [((3, 4), (5, 6)), ((3,), (3, 2)), ((2, 3, 4), (4, 2))])
def test_te_matmul_refuses_shapes_that_cannot_be_multiplied(a_shape, b_shape):
    from tvm import te
    A, B = te.placeholder(a_shape, name="A"), te.placeholder(b_shape, name="B")
    with pytest.raises(ValueError, match=r"te_matmul needs shapes \(n, k\) and \(k, m\), got"):
        d2ltvm.te_matmul(A, B)


def test_te_matmul_accepts_a_symbolic_inner_size_and_refuses_through_emit_te():
    from tvm import te
    n = tvm.tirx.Var("n", "int64")
    C = d2ltvm.te_matmul(te.placeholder((4, n), name="A"), te.placeholder((n, 5), name="B"))
    assert [int(s) for s in C.shape] == [4, 5]
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    w = relax.Var("w", relax.TensorType((4, 5), "float32"))
    bb = relax.BlockBuilder()
    with pytest.raises(ValueError, match=r"got \(2, 3\) and \(4, 5\)"):
        with bb.function("main", params=[x, w]):
            bb.emit_func_output(bb.emit_te(d2ltvm.te_matmul, x, w))


def test_both_routes_fuse_into_the_same_three_kernels():
    """The fusion claim of the chapter: TE-emitted and operator-level imports of an MLP both end
    with three PrimFuncs after the zero pipeline (reshape, two fused linear layers)."""
    fx_module = torch.fx.symbolic_trace(MLP())
    target = d2ltvm.host_target()
    for style in sorted(STYLES):
        mod = d2ltvm.from_fx(fx_module, [(2, 3, 4)], *STYLES[style]())
        with target:
            fused = relax.get_pipeline("zero")(mod)
        names = d2ltvm.tensorir_functions(fused)
        assert len(names) == 3 and sum(n.startswith("fused_") for n in names) == 2, (style, names)


def test_emit_func_output_twice_is_a_clear_error():
    x = relax.Var("x", relax.TensorType((2,), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", params=[x]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit_te(d2ltvm.te_relu, x))
        bb.emit_func_output(y)
        with pytest.raises(RuntimeError, match="emit_func_output must be called exactly once"):
            bb.emit_func_output(y)


def test_every_mlp_ladder_agrees_on_every_shipped_image():
    """numpy, PyTorch, our importer (TensorIR via TE rules, Relax operators) and TVM's importers
    make the same prediction on each of the 2,000 shipped Fashion-MNIST test images."""
    from tvm.relax.frontend.torch import from_exported_program
    from tvm.relax.frontend.torch import from_fx as tvm_from_fx
    data = d2ltvm.load_fashion_mnist_subset()
    params = d2ltvm.load_mlp_params()
    images = torch.from_numpy(data.test_images)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), *d2ltvm.mlp_torch_model(params)).eval()
    expected = d2ltvm.numpy_mlp(data.test_images.reshape(-1, 784), **params)
    with torch.no_grad():
        scores = {"torch": mlp(images).numpy()}
    fx_module = torch.fx.symbolic_trace(mlp)
    shape = tuple(images.shape)
    for style in sorted(STYLES):
        scores[f"ours, {style}"] = run(d2ltvm.from_fx(fx_module, [shape], *STYLES[style]()), images)
    scores["tvm from_fx"] = run(tvm_from_fx(fx_module, [(shape, "float32")]), images)
    exported = torch.export.export(mlp, (images,))
    scores["tvm from_exported_program"] = run(
        from_exported_program(exported, unwrap_unit_return_tuple=True), images)
    for name, got in scores.items():
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=name)
        assert (got.argmax(1) == expected.argmax(1)).all(), name
    assert 0.85 < (expected.argmax(1) == data.test_labels).mean() < 0.95
