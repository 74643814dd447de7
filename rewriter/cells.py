"""One step of an LSTM or a GRU as one module, with the multipliers of its exact decomposition.

Unrolled over time, a recurrent layer is affine maps, elementwise activations (rescale
rule) and products of two input-dependent tensors (Shapley rule), so DeepLIFT is exact on
it. Written out op by op that is some twenty graph nodes per step; each step here is one
module instead, whose registered rule gives, in closed form, the multipliers the
decomposition would have produced (the pattern of ``Standardize``): the same exactness,
a forward pass a few times faster.

Explainers hook one input and one output per module, so the step's inputs arrive packed
side by side along dim 1 and its two outputs leave packed too (the importer slices them).
An activation is an ONNX recurrent activation name with its alpha and beta; ``clip``
bounds its input, as the ONNX ops do. Each activation's rescale multiplier is taken
between each row and its reference row, falling back to the derivative at their midpoint
where the two barely differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .modules import Elementwise, ExactRule, _rescale, pair_mean

Activation = tuple[str, float | None, float | None]

_FUNCTIONS: dict[str, Callable[[torch.Tensor, float | None, float | None], torch.Tensor]] = {
    "Sigmoid": lambda x, a, b: torch.sigmoid(x),
    "Tanh": lambda x, a, b: torch.tanh(x),
    "Relu": lambda x, a, b: torch.relu(x),
    "LeakyRelu": lambda x, a, b: F.leaky_relu(x, 0.01 if a is None else a),
    "ThresholdedRelu": lambda x, a, b: torch.where(x > (1.0 if a is None else a), x, torch.zeros_like(x)),
    "HardSigmoid": lambda x, a, b: torch.clamp((0.2 if a is None else a) * x + (0.5 if b is None else b), 0, 1),
    "Elu": lambda x, a, b: F.elu(x, 1.0 if a is None else a),
    "Softsign": lambda x, a, b: F.softsign(x),
    "Softplus": lambda x, a, b: F.softplus(x),
    "ScaledTanh": lambda x, a, b: (1.0 if a is None else a) * torch.tanh((1.0 if b is None else b) * x),
    "Affine": lambda x, a, b: (1.0 if a is None else a) * x + (0.0 if b is None else b),
}
ACTIVATIONS = frozenset(_FUNCTIONS)


def _apply(activation: Activation, clip: float | None, x: torch.Tensor) -> torch.Tensor:
    name, alpha, beta = activation
    if clip is not None:
        x = torch.clamp(x, -clip, clip)
    return _FUNCTIONS[name](x, alpha, beta)


class RecurrentActivation(Elementwise):
    """An RNN step's activation that torch has no module for (or a clipped one): elementwise,
    so the rescale rule is exact."""

    def __init__(self, activation: Activation, clip: float | None = None) -> None:
        super().__init__()
        self.activation, self.clip = tuple(activation), clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _apply(self.activation, self.clip, x)

    def extra_repr(self) -> str:
        return f"{self.activation[0]}" + (f", clip={self.clip}" if self.clip is not None else "")


class _Step(ExactRule):
    """What LSTM and GRU steps share: their activations, clipped, and their rescale rule."""

    report_kind = "recurrent"

    def __init__(self, hidden: int, activations: Sequence[Activation], clip: float | None) -> None:
        super().__init__()
        self.hidden, self.activations, self.clip = hidden, [tuple(a) for a in activations], clip

    def act(self, k: int, x: torch.Tensor) -> torch.Tensor:
        return _apply(self.activations[k], self.clip, x)

    def rescaled(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Rescale multipliers of activation ``k`` at ``x`` (both halves of the batch)."""
        half = x.shape[0] // 2
        a, b = x[:half], x[half:]
        with torch.enable_grad():
            mid = ((a + b) / 2).detach().requires_grad_()
            (slope,) = torch.autograd.grad(self.act(k, mid).sum(), mid)
        m = _rescale(self.act(k, a) - self.act(k, b), a - b, slope)
        return torch.cat([m, m])

    def extra_repr(self) -> str:
        names = ", ".join(a[0] for a in self.activations)
        return f"hidden={self.hidden}, activations=({names})" + (f", clip={self.clip}" if self.clip is not None else "")


class LSTMStep(_Step):
    """One ONNX LSTM step: packed ``[input part of the gates i, o, f, c (4H) | previous hidden
    (H) | previous cell (H)]`` -> packed ``[hidden (H) | cell (H)]``; activations ``(f, g, h)``,
    recurrent weights ``R`` ``[4H, H]``, optional peepholes ``P`` ``[3H]``.

    Gate pre-activations ``x + H @ R^T`` (plus ``P * c_prev`` for i and f), then
    ``c = f(f~) * c_prev + f(i~) * g(c~)``, ``o = f(o~ + P_o * c)``, ``h = o * h(c)``.
    """

    def __init__(self, hidden: int, recurrent: torch.Tensor,
                 activations: Sequence[Activation] = (("Sigmoid", None, None), ("Tanh", None, None),
                                                      ("Tanh", None, None)),
                 clip: float | None = None, peephole: torch.Tensor | None = None) -> None:
        super().__init__(hidden, activations, clip)
        self.register_buffer("recurrent", recurrent)
        self.register_buffer("peephole", peephole)

    def _forward_parts(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        return lstm_parts(packed, self.recurrent, self.hidden, self.activations, self.clip, self.peephole)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        parts = self._forward_parts(packed)
        return torch.cat([parts["h"], parts["c"]], 1)

    def deeplift_multipliers(self, packed: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        """Backward through the decomposition: rescale for each activation, the Shapley rule
        (the other factor's pair mean) for ``f * c_prev``, ``i * g`` and ``o * h(c)``; the
        recurrent matrix product and the peepholes are linear."""
        v = self._forward_parts(packed.detach())
        n = self.hidden
        m_h, m_c = grad_output[:, :n], grad_output[:, n:]
        m_o = m_h * pair_mean(v["squashed"])
        m_c = m_c + m_h * pair_mean(v["o"]) * self.rescaled(2, v["c"])
        m_pre_o = m_o * self.rescaled(0, v["pre_o"])
        if self.peephole is not None:
            m_c = m_c + m_pre_o * self.peephole[n:2 * n]
        m_pre_f = m_c * pair_mean(v["c_prev"]) * self.rescaled(0, v["pre_f"])
        m_pre_i = m_c * pair_mean(v["g"]) * self.rescaled(0, v["pre_i"])
        m_pre_g = m_c * pair_mean(v["i"]) * self.rescaled(1, v["pre_g"])
        m_c_prev = m_c * pair_mean(v["f"])
        if self.peephole is not None:
            m_c_prev = m_c_prev + m_pre_i * self.peephole[:n] + m_pre_f * self.peephole[2 * n:]
        m_pre = torch.cat([m_pre_i, m_pre_o, m_pre_f, m_pre_g], 1)
        return torch.cat([m_pre, m_pre @ self.recurrent, m_c_prev], 1)


class GRUStep(_Step):
    """One ONNX GRU step: packed ``[input part of z, r, h~ (3H) | previous hidden (H)]`` -> the
    new hidden state; activations ``(f, g)``, recurrent weights ``R`` ``[3H, H]`` and bias
    ``Rb_h``.

    ``z, r = f(x_zr + H @ R_zr^T)``; with ``linear_before_reset``
    ``h~ = g(x_h + r * (H @ Rh^T + Rb_h))``, without ``h~ = g(x_h + (r * H) @ Rh^T + Rb_h)``;
    then ``H' = h~ + z * (H - h~)``, one product instead of two.
    """

    def __init__(self, hidden: int, recurrent: torch.Tensor, bias_h: torch.Tensor, linear_before_reset: bool,
                 activations: Sequence[Activation] = (("Sigmoid", None, None), ("Tanh", None, None)),
                 clip: float | None = None) -> None:
        super().__init__(hidden, activations, clip)
        self.linear_before_reset = bool(linear_before_reset)
        self.register_buffer("recurrent", recurrent)
        self.register_buffer("bias_h", bias_h)

    def _forward_parts(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        return gru_parts(packed, self.recurrent, self.bias_h, self.hidden, self.linear_before_reset,
                         self.activations, self.clip)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self._forward_parts(packed)["h"]

    def deeplift_multipliers(self, packed: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
        """Backward through the decomposition: the Shapley rule for ``z * (H - h~)`` and the
        reset product, rescale for each activation; the matrix products are linear."""
        v = self._forward_parts(packed.detach())
        n = self.hidden
        m_change = grad_output * pair_mean(v["z"])
        m_z = grad_output * pair_mean(v["change"])
        m_h_prev = m_change
        m_pre_c = (grad_output - m_change) * self.rescaled(1, v["pre_c"])
        if self.linear_before_reset:
            m_r = m_pre_c * pair_mean(v["inner"])
            m_rec_h = m_pre_c * pair_mean(v["r"])
        else:
            m_reset_h = m_pre_c @ self.recurrent[2 * n:]
            m_r = m_reset_h * pair_mean(v["inner"])
            m_h_prev = m_h_prev + m_reset_h * pair_mean(v["r"])
        m_pre_zr = torch.cat([m_z, m_r], 1) * self.rescaled(0, v["pre_zr"])
        m_rec = torch.cat([m_pre_zr, m_rec_h], 1) if self.linear_before_reset else m_pre_zr
        rows = m_rec.shape[1]
        return torch.cat([m_pre_zr, m_pre_c, m_h_prev + m_rec @ self.recurrent[:rows]], 1)


def lstm_parts(packed: torch.Tensor, recurrent: torch.Tensor, hidden: int, activations: Sequence[Activation],
               clip: float | None, peephole: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Every value of an LSTM step (see :class:`LSTMStep`), by name."""
    n = hidden

    def act(k: int, x: torch.Tensor) -> torch.Tensor:
        return _apply(activations[k], clip, x)

    x, h_prev, c_prev = packed[:, :4 * n], packed[:, 4 * n:5 * n], packed[:, 5 * n:]
    pre = torch.addmm(x, h_prev, recurrent.t())
    pre_i, pre_o, pre_f, pre_g = pre[:, :n], pre[:, n:2 * n], pre[:, 2 * n:3 * n], pre[:, 3 * n:]
    if peephole is None:
        gates = act(0, pre[:, :3 * n])  # i, o and f share one activation call
        i, o, f = gates[:, :n], gates[:, n:2 * n], gates[:, 2 * n:]
    else:
        p_i, p_o, p_f = peephole[:n], peephole[n:2 * n], peephole[2 * n:]
        pre_i, pre_f = pre_i + p_i * c_prev, pre_f + p_f * c_prev
        i, f = act(0, pre_i), act(0, pre_f)
    g = act(1, pre_g)
    c = torch.addcmul(f * c_prev, i, g)
    if peephole is not None:
        pre_o = pre_o + p_o * c
        o = act(0, pre_o)
    squashed = act(2, c)
    return dict(pre_i=pre_i, pre_o=pre_o, pre_f=pre_f, pre_g=pre_g, c_prev=c_prev, i=i, f=f, g=g, c=c, o=o,
                squashed=squashed, h=o * squashed)


def gru_parts(packed: torch.Tensor, recurrent: torch.Tensor, bias_h: torch.Tensor, hidden: int,
              linear_before_reset: bool, activations: Sequence[Activation],
              clip: float | None) -> dict[str, torch.Tensor]:
    """Every value of a GRU step (see :class:`GRUStep`), by name."""
    n = hidden
    x, h_prev = packed[:, :3 * n], packed[:, 3 * n:]
    rows = 3 * n if linear_before_reset else 2 * n
    rec = h_prev @ recurrent[:rows].t()
    pre_zr = x[:, :2 * n] + rec[:, :2 * n]
    zr = _apply(activations[0], clip, pre_zr)
    z, r = zr[:, :n], zr[:, n:]
    if linear_before_reset:
        inner = rec[:, 2 * n:] + bias_h
        pre_c = x[:, 2 * n:] + r * inner
    else:
        inner = h_prev
        pre_c = x[:, 2 * n:] + (r * h_prev) @ recurrent[2 * n:].t() + bias_h
    candidate = _apply(activations[1], clip, pre_c)
    change = h_prev - candidate
    return dict(pre_zr=pre_zr, z=z, r=r, inner=inner, pre_c=pre_c, candidate=candidate, change=change,
                h=candidate + z * change)


def lstm_step(packed: torch.Tensor, recurrent: torch.Tensor, hidden: int, activations: Sequence[Activation],
              clip: float | None, peephole: torch.Tensor | None) -> torch.Tensor:
    """An LSTM step as a function, for weights computed at run time (no exact rule: the
    products with the weights are products of two input-dependent tensors)."""
    parts = lstm_parts(packed, recurrent, hidden, activations, clip, peephole)
    return torch.cat([parts["h"], parts["c"]], 1)


def gru_step(packed: torch.Tensor, recurrent: torch.Tensor, bias_h: torch.Tensor, hidden: int,
             linear_before_reset: bool, activations: Sequence[Activation], clip: float | None) -> torch.Tensor:
    """A GRU step as a function, for weights computed at run time (see :func:`lstm_step`)."""
    return gru_parts(packed, recurrent, bias_h, hidden, linear_before_reset, activations, clip)["h"]
