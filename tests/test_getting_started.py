"""Unit tests of the helpers saved by chapters/getting_started/vector_add.ipynb."""
import numpy as np
import pytest
import tvm
from tvm import te

import d2ltvm


def test_get_abc_shapes_dtypes_and_determinism():
    a, b, c = d2ltvm.get_abc((2, 3))
    assert a.shape == b.shape == c.shape == (2, 3)
    assert a.dtype == b.dtype == c.dtype == np.float32
    assert not np.array_equal(a, b), "a and b must be different random arrays"
    assert not c.any()
    a2, b2, _ = d2ltvm.get_abc((2, 3))
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    a3, _, _ = d2ltvm.get_abc((2, 3), seed=1)
    assert not np.array_equal(a, a3)


def test_get_abc_int_shape_and_constructor():
    a, b, c = d2ltvm.get_abc(5, tvm.runtime.tensor)
    assert isinstance(a, tvm.runtime.Tensor) and tuple(c.shape) == (5,)
    np.testing.assert_array_equal(a.numpy(), d2ltvm.get_abc(5)[0])


@pytest.mark.parametrize("shape", [0, -3, (), (2, 0), (2.5,), "10", None])
def test_get_abc_rejects_bad_shapes(shape):
    with pytest.raises((ValueError, TypeError), match="shape"):
        d2ltvm.get_abc(shape)


@pytest.mark.parametrize("n", [0, -1, 2.0, "8", None])
def test_vector_add_rejects_bad_lengths(n):
    with pytest.raises(ValueError, match="vector length must be a positive int"):
        d2ltvm.vector_add(n)


@pytest.mark.parametrize("n", [1, 7, 64])
def test_vector_add_builds_and_matches_numpy(n):
    A, B, C = d2ltvm.vector_add(n)
    assert [t.shape[0] for t in (A, B, C)] == [n] * 3 and C.dtype == "float32"
    mod = tvm.IRModule({"main": te.create_prim_func([A, B, C])})
    add = tvm.compile(mod, target=d2ltvm.host_target())["main"]
    a, b, c = d2ltvm.get_abc(n, tvm.runtime.tensor)
    add(a, b, c)
    np.testing.assert_allclose(c.numpy(), a.numpy() + b.numpy())
    assert np.any(c.numpy() != 0)


SSE_ONLY = '{"kind": "llvm", "mcpu": "x86-64-v2"}'
HOST_ARCH = d2ltvm.target_arch(tvm.target.Target.from_device(tvm.cpu()))


def test_host_target_is_this_machine_with_its_cores(monkeypatch):
    monkeypatch.delenv("D2LTVM_TARGET", raising=False)
    target = d2ltvm.host_target()
    host = tvm.target.Target.from_device(tvm.cpu())
    assert target.attrs["mcpu"] == host.attrs["mcpu"]
    assert int(target.attrs["num-cores"]) == d2ltvm.usable_cores() >= 1
    assert d2ltvm.isa_class(target) in ("x86-64-avx512", "x86-64-avx2", "x86-64", "aarch64")


@pytest.mark.skipif(HOST_ARCH != "x86_64", reason="the override names an x86-64 CPU")
def test_d2ltvm_target_overrides_the_host(monkeypatch):
    monkeypatch.setenv("D2LTVM_TARGET", SSE_ONLY)
    target = d2ltvm.host_target()
    assert target.attrs["mcpu"] == "x86-64-v2" and d2ltvm.isa_class(target) == "x86-64"
    assert int(target.attrs["num-cores"]) == d2ltvm.usable_cores()
    monkeypatch.setenv("D2LTVM_TARGET", '{"kind": "llvm", "mcpu": "x86-64-v2", "num-cores": 3}')
    assert int(d2ltvm.host_target().attrs["num-cores"]) == 3


@pytest.mark.parametrize("spec, message", [
    ("x86-64-v2", "D2LTVM_TARGET is not JSON"),
    ('{"kind": "cuda"}', '"kind": "llvm"'),
    ('["llvm"]', '"kind": "llvm"'),
    ('{"kind": "llvm", "mcpu": "no-such-cpu"}', "mcpu 'no-such-cpu'"),
])
def test_bad_d2ltvm_target_is_a_clear_error(monkeypatch, spec, message):
    monkeypatch.setenv("D2LTVM_TARGET", spec)
    with pytest.raises(ValueError, match=message):
        d2ltvm.host_target()


def test_a_target_this_cpu_cannot_run_is_refused_unless_cross_compiling(monkeypatch):
    other = "aarch64" if HOST_ARCH == "x86_64" else "x86_64"
    spec = ('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "generic"}'
            if other == "aarch64" else '{"kind": "llvm", "mtriple": "x86_64-linux-gnu"}')
    monkeypatch.setenv("D2LTVM_TARGET", spec)
    with pytest.raises(RuntimeError, match=f"compiles for {other}.*cannot run here"):
        d2ltvm.host_target()
    assert d2ltvm.target_arch(d2ltvm.host_target(runnable=False)) == other


@pytest.mark.skipif(HOST_ARCH != "x86_64", reason="compares x86-64 instruction sets")
def test_a_wider_instruction_set_than_this_cpu_is_refused():
    host = d2ltvm.isa_class(tvm.target.Target.from_device(tvm.cpu()))
    if host == "x86-64-avx512":
        pytest.skip("this CPU has AVX-512: no x86-64 target has more to refuse")
    with pytest.raises(RuntimeError, match="avx512f.*D2LTVM_TARGET"):
        d2ltvm.check_target_runs_here(tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v4"}))


@pytest.mark.parametrize("spec, expected", [
    ({"kind": "llvm", "mcpu": "x86-64-v2"}, "x86-64"),
    ({"kind": "llvm", "mcpu": "x86-64-v3"}, "x86-64-avx2"),  # the x86-64 levels, not one CPU
    ({"kind": "llvm", "mcpu": "x86-64-v4"}, "x86-64-avx512"),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "generic"}, "aarch64"),
    ({"kind": "llvm", "mtriple": "arm64-apple-macos", "mcpu": "generic"}, "aarch64"),
])
def test_isa_classes(spec, expected):
    assert d2ltvm.isa_class(tvm.target.Target(spec)) == expected


def test_usable_cores_without_affinity_masks(monkeypatch):
    import os
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # as on macOS and Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert d2ltvm.usable_cores() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert d2ltvm.usable_cores() == 1


def test_machine_facts_name_what_the_results_depend_on():
    facts = d2ltvm.machine_facts()
    assert set(facts) == {"cpu", "isa", "vector bits", "cores", "target"}
    assert facts["cpu"] and facts["cores"] == d2ltvm.usable_cores()
    assert facts["vector bits"] in (128, 256, 512)


def test_plain_llvm_is_the_generic_cpu_of_this_architecture():
    plain = tvm.target.Target("llvm")
    assert d2ltvm.target_arch(plain) == HOST_ARCH
    if HOST_ARCH == "x86_64":
        assert d2ltvm.isa_class(plain) == "x86-64"
        assert not tvm.target.codegen.llvm_cpu_has_features("avx", plain)


def _vector_adds(target):
    """The float-add instructions of a 1024-element addition vectorized by 8, built for TARGET."""
    import re
    A, B, C = d2ltvm.vector_add(1024)
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([A, B, C])}))
    (i,) = sch.get_loops(sch.get_sblock("C"))
    _, inner = sch.split(i, factors=[None, 8])
    sch.vectorize(inner)
    asm = tvm.compile(sch.mod, target=target).mod.inspect_source("asm")
    return {" ".join(line.split()[:1] + re.findall(r"%[xyz]mm", line)[-1:])
            for line in asm.splitlines() if re.match(r"\s*v?addps\b", line)}


@pytest.mark.skipif(HOST_ARCH != "x86_64", reason="reads x86-64 assembly")
@pytest.mark.parametrize("target, expected", [
    ("llvm", {"addps %xmm"}),  # SSE: 4 floats per instruction
    ({"kind": "llvm", "mcpu": "x86-64-v3"}, {"vaddps %ymm"}),  # AVX2: all 8 at once
])
def test_what_the_vector_add_chapter_says_about_plain_llvm_and_avx2(target, expected):
    # only compiled, never run: an x86-64-v3 target is fine on any x86-64 machine
    assert _vector_adds(tvm.target.Target(target)) == expected
