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
    add = tvm.compile(tvm.IRModule({"main": te.create_prim_func([A, B, C])}), target="llvm")["main"]
    a, b, c = d2ltvm.get_abc(n, tvm.runtime.tensor)
    add(a, b, c)
    np.testing.assert_allclose(c.numpy(), a.numpy() + b.numpy())
    assert np.any(c.numpy() != 0)
