"""Graph passes that make an ONNX graph exactly explainable, and the order they run in."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from .activations import decompose_activations, fuse_activations
from .base import GraphPass, PassOptions, PassResult
from .batch import make_batch_dynamic
from .cleanup import drop_identities, remove_dead_nodes
from .constants import fold_constants, fold_large_constants
from .expand import expand_function_ops
from .functions import attach_functions
from .guard import refuse_oversized_values
from .loops import unroll_loops
from .maxima import exact_maxima
from .normalization import decompose_log_softmax, decompose_normalization
from .precision import upcast_half_precision
from .products import shapley_products
from .shapes import measure_shapes, refresh_shapes

# The one list of passes, in the order they run.
PIPELINE: list[GraphPass] = [
    upcast_half_precision,
    remove_dead_nodes,
    drop_identities,
    expand_function_ops,
    make_batch_dynamic,
    fold_constants,
    refuse_oversized_values,
    fold_large_constants,
    measure_shapes,
    unroll_loops,
    fuse_activations,
    decompose_activations,
    decompose_normalization,
    decompose_log_softmax,
    exact_maxima,
    shapley_products,
]


def run_passes(model: onnx.ModelProto, options: PassOptions | None = None,
               pipeline: list[GraphPass] | None = None) -> tuple[onnx.ModelProto, list[PassResult]]:
    """Run ``pipeline`` (default :data:`PIPELINE`) over ``model``; return the new model and each
    pass's result."""
    options = options or PassOptions()
    graph = gs.import_onnx(model)
    # Recorded types let passes tell float data from integer shape arithmetic; where
    # inference cannot tell, passes treat a value as float, and verification has the last word.
    refresh_shapes(graph)
    results = []
    for graph_pass in pipeline if pipeline is not None else PIPELINE:
        result = graph_pass(graph, options)
        results.append(result)
        if result.count:
            refresh_shapes(graph)  # later passes read shapes of what this one added
    graph.cleanup().toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = model.ir_version
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    out.producer_name = model.producer_name
    attach_functions(out)
    return out, results


__all__ = ["PIPELINE", "PassOptions", "PassResult", "run_passes"]
