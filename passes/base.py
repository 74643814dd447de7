"""The pass interface.

A pass is a function ``(graph, options) -> PassResult`` over an onnx-graphsurgeon graph.
It has one responsibility, edits the graph in place, and never changes what the graph
computes beyond float rounding. Its result names every node it removed, added or changed,
so reports can say exactly what happened.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..onnxkit.graph import shared_names


@dataclass(frozen=True)
class PassOptions:
    """Options every pass may read.

    dynamic_batch: make a fixed leading (batch) dim of the graph inputs dynamic.
    decompose_clips: write Clip (ReLU6, Hardtanh) as ReLUs. Off by default: a clip kept
        whole gets the rescale rule registered, whose multipliers are the same as the
        ReLUs', and on ReLU6-heavy networks (MobileNet) the ReLUs cost about 1.5x the
        forward time. On, the result is exact even with explainers rewriter cannot register
        rules with.
    feeds: the check inputs by graph input name, at two batch sizes; shapes are measured
        by running the graph on them (see ``shapes.measure_shapes``).
    max_tensor_bytes: the largest tensor the graph may compute at the check inputs' sizes
        (see ``guard.refuse_oversized_values``).
    """

    dynamic_batch: bool = True
    decompose_clips: bool = False
    feeds: tuple[Mapping[str, np.ndarray], ...] = ()
    max_tensor_bytes: int = 1 << 30


@dataclass
class PassResult:
    """What one pass did, by node name."""

    name: str = ""  # the pass's own name, set by :func:`graph_pass`
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    note: str | None = None  # what a pass that changes no node found
    declined: dict[str, str] = field(default_factory=dict)  # near-matches left alone, by node: why

    @property
    def count(self) -> int:
        return len(self.removed) + len(self.added) + len(self.changed)

    def as_dict(self) -> dict:
        found = {"pass": self.name, "removed": self.removed, "added": self.added, "changed": self.changed}
        if self.note:
            found["note"] = self.note
        if self.declined:
            found["declined"] = self.declined
        return found


GraphPass = Callable[[gs.Graph, PassOptions], PassResult]


def graph_pass(function: GraphPass) -> GraphPass:
    """A pass of the pipeline: its result is named after the function."""
    @functools.wraps(function)
    def run(graph: gs.Graph, options: PassOptions) -> PassResult:
        result = function(graph, options)
        result.name = function.__name__
        return result

    return run


def replace_each(graph: gs.Graph, rewrite: Callable[[gs.Node], list[str] | None]) -> PassResult:
    """Run ``rewrite`` on every node. It rebuilds the node's computation with new nodes that
    write the node's outputs and returns their names, or returns None to leave the node;
    replaced nodes are then cleaned away."""
    result = PassResult()
    with shared_names(graph):
        for node in list(graph.nodes):
            added = rewrite(node)
            if added is not None:
                result.removed.append(node.name)
                result.added.extend(added)
    if result.removed:
        graph.cleanup()
    return result

