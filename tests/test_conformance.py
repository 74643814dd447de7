"""ONNX's own conformance node tests, through ``rewrite()``.

Every case of ``onnx.backend.test.case.node`` whose graph inputs and outputs are all float
tensors is rewritten with its own inputs as example inputs, and the result compared with
the case's expected outputs. Two promises are checked: no case ever returns a model whose
outputs differ from the expected ones (verification refuses it first), and the number
that pass stays above a floor, raised as coverage grows.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rewriter import ShapRewriteError, rewrite

FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
# Of the float cases onnxruntime itself passes, how many the rewrite must pass (759 of 775
# with onnx 1.23 and onnxruntime 1.32; refused with a typed error: the ai.onnx.ml ops,
# DeformConv, BatchNormalization in training mode, Resize with antialias, Scan at opset 8,
# a Range in a Loop whose trip count depends on the input, two attention cases with a past).
FLOOR = 755


def _float_tensor(vi: onnx.ValueInfoProto) -> bool:
    return vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in FLOATS


def _cases():
    import onnx.backend.test.case.node as node_cases

    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node_cases.collect_testcases()
    return [c for c in cases if c.model.graph.input and all(_float_tensor(v) for v in c.model.graph.input)
            and all(_float_tensor(v) for v in c.model.graph.output)]


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    half = want.dtype == np.float16
    return got.shape == want.shape and bool(np.allclose(got, want.astype(got.dtype), equal_nan=True,
                                                        rtol=1e-2 if half else 1e-3, atol=1e-3 if half else 1e-5))


def _arrays(values) -> list[np.ndarray]:
    """A case's data as arrays: some cases store tensors as ``TensorProto``s or numpy scalars."""
    return [onnx.numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else np.asarray(v) for v in values]


def _onnxruntime_passes(case) -> bool:
    inputs, expected = (_arrays(values) for values in case.data_sets[0])
    try:
        session = ort.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, {vi.name: x for vi, x in zip(case.model.graph.input, inputs)})
    except Exception:  # onnxruntime lacks the op or the type: not counted
        return False
    return all(_close(g, e) for g, e in zip(got, expected))


def _outcome(case) -> str:
    """"pass", "wrong" (a model was returned and differs), or the error type refusing it."""
    arrays, expected = (_arrays(values) for values in case.data_sets[0])
    if any(a.dtype == object for a in arrays):
        return "unfeedable"  # data torch has no type for (onnxruntime cannot run these either)
    # A half-precision graph is rewritten into a float32 module taking float32 inputs.
    tensors = [torch.from_numpy(a.astype(np.float32) if a.dtype == np.float16 else a) for a in arrays]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = rewrite(case.model, *tensors, output=list(range(len(case.model.graph.output))))
            with torch.no_grad():
                out = module(*tensors)
    except ShapRewriteError as exc:
        return type(exc).__name__
    outputs = out if isinstance(out, tuple) else (out,)
    return "pass" if all(_close(o.numpy(), e) for o, e in zip(outputs, expected)) else "wrong"


@pytest.fixture(scope="module")
def outcomes() -> dict[str, tuple[bool, str]]:
    return {case.name: (_onnxruntime_passes(case), _outcome(case)) for case in _cases()}


def test_no_case_returns_a_wrong_model(outcomes):
    wrong = sorted(name for name, (_, outcome) in outcomes.items() if outcome == "wrong")
    assert wrong == []


def test_most_cases_onnxruntime_passes_pass(outcomes):
    judged = [outcome for runs, outcome in outcomes.values() if runs]
    passed = judged.count("pass")
    assert passed >= FLOOR, f"{passed} of {len(judged)} pass"
    assert passed >= 0.95 * len(judged)
