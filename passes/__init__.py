"""Graph passes that make an ONNX graph exactly explainable, and the order they run in."""

from __future__ import annotations

from ..onnxkit.functions import attach_functions
from ..onnxkit.graph import toposorted
from ..onnxkit.shapes import refresh_shapes
from ..onnxkit.weights import LightModel, export_light, import_light
from .activations import decompose_activations, fuse_activations
from .base import GraphPass, PassOptions, PassResult
from .batch import make_batch_dynamic
from .cleanup import drop_identities, remove_dead_nodes
from .constants import fold_constants, fold_large_constants
from .custom_ops import fuse_custom_ops
from .expand import expand_function_ops
from .guard import refuse_oversized_values
from .loops import unroll_loops
from .maxima import exact_maxima
from .normalization import decompose_log_softmax, decompose_normalization
from .precision import half_precision_type, upcast_half_precision, upcast_model
from .products import shapley_products
from .sequence_lengths import drop_full_sequence_lengths
from .shapes import measure_shapes

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
    drop_full_sequence_lengths,
    unroll_loops,
    fuse_custom_ops,
    fuse_activations,
    decompose_activations,
    decompose_normalization,
    decompose_log_softmax,
    exact_maxima,
    shapley_products,
]


def run_passes(source: LightModel, options: PassOptions | None = None,
               pipeline: list[GraphPass] | None = None) -> tuple[LightModel, list[PassResult]]:
    """Run ``pipeline`` (default :data:`PIPELINE`) over ``source``; return the new model and
    each pass's result. Both keep their large weights apart (see ``rewriter.onnxkit.weights``)."""
    options = options or PassOptions()
    model = source.proto
    graph = import_light(model, source.held)
    # Recorded types let passes tell float data from integer shape arithmetic; where
    # inference cannot tell, passes treat a value as float, and verification has the last word.
    refresh_shapes(graph)
    results = []
    for graph_pass in pipeline if pipeline is not None else PIPELINE:
        result = graph_pass(graph, options)
        results.append(result)
        if result.count:
            refresh_shapes(graph)  # later passes read shapes of what this one added
    toposorted(graph.cleanup())
    light = export_light(graph)
    out = light.proto
    out.ir_version = model.ir_version
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    out.producer_name = model.producer_name
    attach_functions(out)
    return light, results


# What the rest of the project uses: the pipeline, and the passes it runs on their own (the
# half-precision reference for ONNX files, the size guard on a saved model).
__all__ = ["PIPELINE", "PassOptions", "PassResult", "half_precision_type", "refuse_oversized_values", "run_passes",
           "upcast_model"]
