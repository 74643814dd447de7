"""Every common activation, as a module and as a function, rewritten and explained exactly by
SHAP and Captum, including on a SHAP that lacks SELU and GELU (shap < 0.45.1 / < 0.47)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import shap.explainers._deep.deep_pytorch as shap_deep
import torch
import torch.nn.functional as F
from explain import captum_relative_delta, shap_relative_error
from onnx import TensorProto, helper
from onnx_graphs import const, model
from torch import nn

from rewriter import registration, rewrite

EXACT = 1e-4

MODULES = {
    "selu": nn.SELU(), "celu": nn.CELU(alpha=1.7), "gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"),
    "silu": nn.SiLU(), "mish": nn.Mish(), "hardswish": nn.Hardswish(), "relu6": nn.ReLU6(),
    "hardtanh": nn.Hardtanh(-0.5, 1.5), "hardsigmoid": nn.Hardsigmoid(), "leaky_relu": nn.LeakyReLU(0.2),
    "elu": nn.ELU(0.8), "softplus": nn.Softplus(), "softsign": nn.Softsign(),
}
FUNCTIONS = {
    "selu": F.selu, "celu": lambda x: F.celu(x, 1.7), "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu, "mish": F.mish, "hardswish": F.hardswish, "relu6": F.relu6,
    "hardtanh": lambda x: F.hardtanh(x, -0.5, 1.5), "hardsigmoid": F.hardsigmoid,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2), "elu": lambda x: F.elu(x, 0.8), "softplus": F.softplus,
    "softsign": F.softsign, "abs": torch.abs, "swish_by_hand": lambda x: x * torch.sigmoid(x),
}


class Wrap(nn.Module):
    """Linear -> activation -> Linear; scales chosen so inputs cross every kink and bound."""

    def __init__(self, act) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.act = act if isinstance(act, nn.Module) else None
        self.fn = None if isinstance(act, nn.Module) else act
        self.fc2 = nn.Linear(12, 3)
        with torch.no_grad():
            self.fc1.weight.mul_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(self.act(h) if self.act is not None else self.fn(h))


class PReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.act = nn.PReLU(4)
        self.fc = nn.Linear(4 * 4 * 4, 2)
        with torch.no_grad():
            self.act.weight.copy_(torch.tensor([0.1, -0.3, 0.5, 1.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).flatten(1))


def cases():
    yield from ((f"module-{k}", lambda v=v: Wrap(v), (6,)) for k, v in MODULES.items())
    yield from ((f"function-{k}", lambda v=v: Wrap(v), (6,)) for k, v in FUNCTIONS.items())
    yield "module-prelu_per_channel", PReLUNet, (2, 4, 4)


CASES = {name: (make, shape) for name, make, shape in cases()}


@pytest.fixture(scope="module", params=sorted(CASES))
def rewritten(request):
    make, shape = CASES[request.param]
    torch.manual_seed(0)
    model = make().eval()
    return request.param, model, shape, rewrite(model, torch.randn(4, *shape))


def test_forward_unchanged(rewritten):
    _, model, shape, result = rewritten
    x = torch.randn(9, *shape) * 2
    with torch.no_grad():
        torch.testing.assert_close(result(x), model(x), atol=1e-5, rtol=1e-4)


def test_shap_additive(rewritten):
    _, _, shape, result = rewritten
    assert shap_relative_error(result, torch.randn(10, *shape), torch.randn(3, *shape)) < EXACT


def test_captum_additive(rewritten):
    _, _, shape, result = rewritten
    assert captum_relative_delta(result, torch.randn(3, *shape), torch.randn(3, *shape)) < EXACT


def test_split_activations_come_back_as_one_module(rewritten):
    name, _, _, result = rewritten
    kinds = {type(m).__name__ for m in result.modules()}
    expected = {"gelu": "GELU", "gelu_tanh": "GELU", "silu": "SiLU", "swish_by_hand": "SiLU", "mish": "Mish",
                "hardswish": "Hardswish", "softplus": "Softplus", "softsign": "Softsign"}
    kind = name.split("-", 1)[1]
    if kind in expected:
        assert expected[kind] in kinds, (name, kinds)
        assert not kinds & {"Erf", "Tanh", "Sigmoid", "Reciprocal"} or kind == "mish"


@pytest.fixture
def old_shap_handler_table():
    """The handler table of shap before 0.45.1: no SELU and no GELU."""
    saved = {k: shap_deep.op_handler.pop(k) for k in ("SELU", "GELU") if k in shap_deep.op_handler}
    yield
    shap_deep.op_handler.update(saved)


@pytest.mark.parametrize("name", ["module-selu", "function-selu", "module-celu", "module-gelu", "function-gelu",
                                  "module-gelu_tanh"])
def test_exact_without_shap_selu_and_gelu(name, old_shap_handler_table):
    make, shape = CASES[name]
    torch.manual_seed(0)
    model = make().eval()
    result = rewrite(model, torch.randn(4, *shape))
    # SELU is decomposed (no SELU module left); GELU is taught to this shap the way it is
    # taught on import, since the table was cut after that.
    assert "SELU" not in {type(m).__name__ for m in result.modules()}
    assert "GELU" in registration.register_shap(shap_deep) or "gelu" not in name
    assert shap_relative_error(result, torch.randn(10, *shape), torch.randn(3, *shape)) < EXACT


def test_registration_is_automatic_on_import_of_rewriter():
    """A fresh process with an old-style handler table: importing rewriter (as loading a saved
    model does) registers GELU with shap, whichever is imported first."""
    script = (
        "import shap.explainers._deep.deep_pytorch as d\n"
        "del d.op_handler['GELU']\n"
        "import rewriter\n"
        "assert d.op_handler['GELU'].__name__ == 'nonlinear_1d'  # shap's rule, finite where nothing changed\n"
        "import captum.attr._core.deep_lift as c, torch\n"
        "assert c.SUPPORTED_NON_LINEAR[torch.nn.GELU].__name__ == 'nonlinear'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr


def test_registration_is_idempotent_and_additive_only():
    first = registration.register()
    again = registration.register()
    assert all(not added for added in again.values())
    assert shap_deep.op_handler["MaxPool2d"] is shap_deep.maxpool  # native entries untouched
    assert isinstance(first, dict)


def test_torchscript_split_gelu_is_one_module():
    model = Wrap(nn.GELU()).eval()
    result, report = rewrite(model, torch.randn(4, 6), exporter="torchscript", report=True)
    fused = next(p for p in report.passes if p.name == "fuse_activations")
    assert len(fused.added) == 1 and len(fused.removed) >= 4
    assert isinstance(result.get_submodule(fused.added[0]), nn.GELU)
    assert shap_relative_error(result, torch.randn(10, 6), torch.randn(3, 6)) < EXACT


def keras_dense_activations() -> onnx.ModelProto:
    """tf2onnx's output for Dense layers with selu, tanh-GELU and swish activations."""
    rng = np.random.default_rng(1)

    def dense(i: int, src: str, n_in: int, n_out: int) -> list:
        inits.extend([const(f"w{i}", (rng.normal(size=(n_in, n_out)) * 0.8).astype(np.float32)),
                      const(f"b{i}", (rng.normal(size=n_out) * 0.3).astype(np.float32))])
        return [helper.make_node("MatMul", [src, f"w{i}"], [f"mm{i}"], name=f"model/dense_{i}/MatMul"),
                helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"], name=f"model/dense_{i}/BiasAdd")]

    inits = [const("c_half", np.array(0.5, np.float32)), const("c_one", np.array(1.0, np.float32)),
             const("c_k", np.array(0.044715, np.float32)), const("c_three", np.array(3.0, np.float32)),
             const("c_s", np.array(0.7978845608028654, np.float32))]
    g = "model/dense_1/Gelu"
    nodes = [
        *dense(0, "input", 5, 8), helper.make_node("Selu", ["z0"], ["a0"], name="model/dense_0/Selu"),
        *dense(1, "a0", 8, 8),
        helper.make_node("Pow", ["z1", "c_three"], ["cube"], name=f"{g}/Pow"),
        helper.make_node("Mul", ["c_k", "cube"], ["kc"], name=f"{g}/mul"),
        helper.make_node("Add", ["z1", "kc"], ["inner"], name=f"{g}/add"),
        helper.make_node("Mul", ["c_s", "inner"], ["scaled"], name=f"{g}/mul_1"),
        helper.make_node("Tanh", ["scaled"], ["t"], name=f"{g}/Tanh"),
        helper.make_node("Add", ["c_one", "t"], ["gate"], name=f"{g}/add_1"),
        helper.make_node("Mul", ["c_half", "z1"], ["hx"], name=f"{g}/mul_2"),
        helper.make_node("Mul", ["hx", "gate"], ["a1"], name=f"{g}/mul_3"),
        *dense(2, "a1", 8, 6),
        helper.make_node("Sigmoid", ["z2"], ["sig"], name="model/dense_2/Sigmoid"),
        helper.make_node("Mul", ["z2", "sig"], ["a2"], name="model/dense_2/mul"),
        *dense(3, "a2", 6, 2),
    ]
    return model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["unk__6", 5])],
                 [helper.make_tensor_value_info("z3", TensorProto.FLOAT, ["unk__6", 2])], inits, opset=13)


def test_keras_dense_activations_explain_exactly():
    result, report = rewrite(keras_dense_activations(), report=True)
    kinds = [type(m).__name__ for m in result.modules()]
    assert "SiLU" in kinds and "GELU" in kinds and "ELU" in kinds
    assert "Tanh" not in kinds and "Sigmoid" not in kinds
    assert shap_relative_error(result, torch.randn(10, 5), torch.randn(3, 5)) < EXACT
    assert captum_relative_delta(result, torch.randn(3, 5), torch.randn(3, 5)) < EXACT


def test_lookalikes_are_left_alone():
    """x * sigmoid(y) with y != x, and 0.4 * x * (1 + erf(x / sqrt(2))), are not activations."""
    nodes = [helper.make_node("Sigmoid", ["y"], ["s"]), helper.make_node("Mul", ["x", "s"], ["gated"]),
             helper.make_node("Div", ["x", "root2"], ["u"]), helper.make_node("Erf", ["u"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["g"]), helper.make_node("Mul", ["x", "g"], ["xg"]),
             helper.make_node("Mul", ["xg", "not_half"], ["almost_gelu"]),
             helper.make_node("Add", ["gated", "almost_gelu"], ["out"])]
    proto = model(nodes, [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 4]) for n in ("x", "y")],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4])],
                  [const("root2", np.array(2 ** 0.5, np.float32)), const("one", np.array(1.0, np.float32)),
                   const("not_half", np.array(0.4, np.float32))])
    _, report = rewrite(proto, report=True)
    assert not next(p for p in report.passes if p.name == "fuse_activations").added


@pytest.mark.parametrize("name", ["module-relu6", "function-relu6", "module-hardtanh", "function-hardtanh"])
def test_clips_written_as_relus_on_request(name):
    make, shape = CASES[name]
    torch.manual_seed(0)
    model = make().eval()
    kept = rewrite(model, torch.randn(4, *shape))
    decomposed, report = rewrite(model, torch.randn(4, *shape), decompose_clips=True, report=True)
    assert {"ReLU6", "Hardtanh"} & {type(m).__name__ for m in kept.modules()}
    assert {type(m).__name__ for m in decomposed.modules() if not list(m.children())} <= {"Linear", "ReLU"}
    assert next(p for p in report.passes if p.name == "decompose_activations").removed
    x = torch.randn(9, *shape) * 3
    with torch.no_grad():
        torch.testing.assert_close(decomposed(x), model(x), atol=1e-5, rtol=1e-4)
    assert shap_relative_error(decomposed, torch.randn(10, *shape), torch.randn(3, *shape)) < EXACT
    assert captum_relative_delta(decomposed, torch.randn(3, *shape), torch.randn(3, *shape)) < EXACT
