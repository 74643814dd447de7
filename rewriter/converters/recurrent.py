"""ONNX LSTM, GRU and RNN, unrolled over time: one module per step (see ``rewriter.cells``).

ONNX semantics (opsets 7-22): gates ordered i, o, f, c (LSTM) and z, r, h (GRU); ``B`` holds
the input biases, then the recurrent ones; ``clip`` bounds the input of every activation;
``direction`` forward, reverse or bidirectional; ``layout`` 1 puts the batch first; a
constant ``sequence_lens`` masks the steps past each row's length (the state is kept, ``Y``
gets zeros) in either direction. The sequence length must be static (the example inputs
fix it); the batch stays dynamic.

The input part of every gate at every step is one matrix product before the loop, with
the biases that sit outside a product folded in; each step adds the recurrent product
``H @ R^T`` and runs one step module. An RNN step is its activation module alone.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from .. import cells, functional
from . import converter

_DEFAULTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_NAMES = {name.lower(): name for name in cells.ACTIVATIONS}
_TORCH = {"Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "Relu": nn.ReLU}  # explainers' own rules
_PARAMETERS = {"LeakyRelu": "a", "ThresholdedRelu": "a", "Elu": "a", "HardSigmoid": "ab", "ScaledTanh": "ab",
               "Affine": "ab"}


def _activations(ctx, directions: int) -> list[list[cells.Activation]]:
    """Per direction, (name, alpha, beta) of each activation the node applies."""
    names = ctx.attr("activations") or _DEFAULTS[ctx.op_type] * directions
    alphas, betas = list(ctx.attr("activation_alpha", [])), list(ctx.attr("activation_beta", []))
    found = []
    for given in names:
        name = _NAMES.get(str(given).lower())
        ctx.require(name is not None, f"activation '{given}' is not an ONNX recurrent activation")
        params = _PARAMETERS.get(name, "")
        alpha = alphas.pop(0) if "a" in params and alphas else None
        beta = betas.pop(0) if "b" in params and betas else None
        found.append((name, alpha, beta))
    per_direction = len(_DEFAULTS[ctx.op_type])
    return [found[d * per_direction:(d + 1) * per_direction] for d in range(directions)]


def _given(ctx, i: int):
    return ctx.input(i) if i < len(ctx.raw) and ctx.raw[i] is not None else None


@converter("LSTM", "GRU", "RNN")
def recurrent(ctx):
    layout = ctx.attr("layout", 0)
    direction = ctx.attr("direction", "forward")
    directions = 2 if direction == "bidirectional" else 1
    hidden = int(ctx.attr("hidden_size"))
    gates = _GATES[ctx.op_type]
    shape = ctx.info(0).shape
    length = shape[1 if layout else 0] if shape else None
    ctx.require(isinstance(length, int), f"the {ctx.op_type}'s sequence length is not fixed, so it cannot be unrolled",
                "give example inputs (or --dim sizes) that fix the sequence length")
    # Weights are constants (one exact module per step) or, as some files feed them, graph
    # inputs; then each step is a plain function, reported approximate.
    w, r = ctx.input(1), ctx.input(2)
    bias = ctx.input(3) if _given(ctx, 3) is not None else torch.zeros(directions, 2 * gates * hidden)
    active = _active_rows(ctx, length)
    peephole = ctx.input(7) if ctx.op_type == "LSTM" and _given(ctx, 7) is not None else None
    x = ctx.input(0)
    if layout:
        x = ctx.method("transpose", x, 0, 1)
    activations = _activations(ctx, directions)
    clip = ctx.attr("clip")
    outputs_y, outputs_h, outputs_c = [], [], []
    for d in range(directions):
        prefix = f"{('fw', 'bw')[d]}_" if directions == 2 else ""
        reverse = direction == "reverse" or d == 1
        wb, rb = ctx.getitem(bias, (d, slice(0, gates * hidden))), ctx.getitem(bias, (d, slice(gates * hidden, None)))
        # Biases outside any product fold into the input part; GRU's Rb_h sits inside one.
        if ctx.op_type == "GRU":
            outside = ctx.call(torch.cat, [ctx.getitem(rb, slice(0, 2 * hidden)),
                                           ctx.call(torch.zeros_like, ctx.getitem(rb, slice(2 * hidden, None)))])
        else:
            outside = rb
        # contiguous: on a transposed view the product would run as many small ones.
        xw = ctx.call(F.linear, ctx.method("contiguous", x), ctx.getitem(w, d), ctx.call(operator.add, wb, outside))
        # The state one step hands the next: [h] (GRU, RNN) or [h | c] (LSTM), packed as the
        # LSTM step module returns it, so each step joins two tensors, not three.
        state = _initial_state(ctx, d, layout, x, hidden)
        step = _stepper(ctx, d, hidden, activations[d], clip, ctx.getitem(r, d), rb,
                        None if peephole is None else ctx.getitem(peephole, d))
        ys = [None] * length
        for t in (reversed(range(length)) if reverse else range(length)):
            new_state = step(ctx.method("select", xw, 0, t), state, f"_{prefix}t{t}")
            ys[t] = _hidden(ctx, new_state, hidden)
            if active is not None:
                ys[t] = ctx.call(torch.where, active[t], ys[t], 0.0)
                new_state = ctx.call(torch.where, active[t], new_state, state)
            state = new_state
        outputs_y.append(ctx.call(torch.stack, ys, 0))
        outputs_h.append(_hidden(ctx, state, hidden))
        outputs_c.append(ctx.getitem(state, (slice(None), slice(hidden, None))) if ctx.op_type == "LSTM" else None)
    return _outputs(ctx, outputs_y, outputs_h, outputs_c, layout)


def _active_rows(ctx, length: int) -> list[torch.Tensor] | None:
    """Per step, which rows are still inside their sequence (``[batch, 1]``, constant), or
    None without sequence_lens or when every row has the full length."""
    if _given(ctx, 4) is None:
        return None
    lengths = ctx.const(4)
    ctx.require(lengths is not None, f"the {ctx.op_type}'s sequence_lens depend on the input; only constant lengths "
                "can be unrolled", "pad the sequences to one length, or fix sequence_lens in the graph")
    lengths = lengths.reshape(-1, 1).long()
    if bool((lengths == length).all()):
        return None
    return [t < lengths for t in range(length)]


def _initial_state(ctx, d: int, layout: int, x, hidden: int):
    """Direction ``d``'s state before the first step: the given ``initial_h`` (and, for an
    LSTM, ``initial_c``) ``[batch, hidden]`` each, zeros where not given."""
    parts = []
    for i in ((5, 6) if ctx.op_type == "LSTM" else (5,)):
        given = _given(ctx, i)
        parts.append(ctx.call(functional.zero_state, x, 1, hidden) if given is None
                     else ctx.method("select", given, 1 if layout else 0, d))
    return parts[0] if len(parts) == 1 else ctx.call(torch.cat, parts, 1)


def _hidden(ctx, state, hidden: int):
    return ctx.getitem(state, (slice(None), slice(0, hidden))) if ctx.op_type == "LSTM" else state


def _stepper(ctx, d: int, hidden: int, activations, clip, r, rb, peephole):
    """A function ``(input part, state, suffix) -> new state`` for one step of this node:
    a step module when the weights are constants, the same step as a function otherwise.
    The step modules share one tensor of recurrent weights: a copy per step left it out of
    cache at every step (the forward took 1.8x as long at two threads)."""
    op = ctx.op_type
    fixed = isinstance(r, torch.Tensor) and (peephole is None or isinstance(peephole, torch.Tensor)) \
        and isinstance(rb, torch.Tensor)
    if op == "RNN":
        name, alpha, _ = activations[0]
        torch_module = _TORCH.get(name) if clip is None and alpha is None else None

        def rnn_step(xt, h, suffix):
            pre = ctx.call(torch.addmm, xt, h, ctx.method("t", r))
            module = torch_module() if torch_module else cells.RecurrentActivation(activations[0], clip)
            return ctx.module(module, pre, suffix=suffix)
        return rnn_step
    if op == "LSTM":
        def lstm_step(xt, state, suffix):
            packed = ctx.call(torch.cat, [xt, state], 1)
            if not fixed:
                return ctx.call(cells.lstm_step, packed, r, hidden, activations, clip, peephole)
            module = cells.LSTMStep(hidden, r, activations, clip, peephole)
            return ctx.module(module, packed, suffix=suffix)
        return lstm_step
    before_reset = bool(ctx.attr("linear_before_reset", 0))
    bias_h = ctx.getitem(rb, slice(2 * hidden, None))

    def gru_step(xt, h, suffix):
        packed = ctx.call(torch.cat, [xt, h], 1)
        if not fixed:
            return ctx.call(cells.gru_step, packed, r, bias_h, hidden, before_reset, activations, clip)
        module = cells.GRUStep(hidden, r, bias_h, before_reset, activations, clip)
        return ctx.module(module, packed, suffix=suffix)
    return gru_step


def _outputs(ctx, ys, hs, cs, layout: int):
    """Y ``[seq, dirs, batch, hidden]`` (layout 1: ``[batch, seq, dirs, hidden]``); Y_h and Y_c
    ``[dirs, batch, hidden]`` (layout 1: ``[batch, dirs, hidden]``)."""
    wanted = [bool(name) for name in ctx.node.output] + [False] * 3
    y = ctx.call(torch.stack, ys, 1) if wanted[0] else None
    if y is not None and layout:
        y = ctx.method("permute", y, 2, 0, 1, 3)
    states = [ctx.call(torch.stack, values, 1 if layout else 0) if want else None
              for values, want in ((hs, wanted[1]), (cs, wanted[2] and ctx.op_type == "LSTM"))]
    return (y, *states)[:len(ctx.node.output)]

