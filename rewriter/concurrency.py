"""Process-wide state that threads share: exports and runs of torch modules kept apart, and
the cyclic garbage collector paused while graphs are exported and converted.

While torch traces a model for export it patches ``torch.nn.Module.__call__`` (and
``__getattr__``) for the whole process: a module called from another thread meanwhile goes
through the tracer, which then fails ("Unexpected key ...") or records the call into the
export. So an export waits until no run is under way and holds new runs back until it ends;
runs overlap each other freely. Exports also exclude each other (torch's exporters are not
re-entrant, and silencing them touches process-wide logger levels and warning filters).
"""

from __future__ import annotations

import contextlib
import gc
import threading


class _Gate:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._runs = 0
        self._exporting = False
        self._waiting = 0  # exports waiting: new runs queue behind them
        self._held = threading.local()  # this thread's depth of runs: a nested one never waits

    @contextlib.contextmanager
    def run(self):
        """Around code that calls torch modules (a forward, an explainer)."""
        depth = getattr(self._held, "depth", 0)
        if not depth:
            with self._changed:
                self._changed.wait_for(lambda: not self._exporting and not self._waiting)
                self._runs += 1
        self._held.depth = depth + 1
        try:
            yield
        finally:
            self._held.depth = depth
            if not depth:
                with self._changed:
                    self._runs -= 1
                    self._changed.notify_all()

    @contextlib.contextmanager
    def export(self):
        """Around a torch export: alone in the process."""
        with self._changed:
            self._waiting += 1
            self._changed.wait_for(lambda: not self._exporting and not self._runs)
            self._waiting -= 1
            self._exporting = True
        try:
            yield
        finally:
            with self._changed:
                self._exporting = False
                self._changed.notify_all()


GATE = _Gate()


class _CollectorPause:
    """Python's cyclic garbage collector off while any thread is inside, on again when the last
    one leaves if it was on when the first came in.

    torch's exporter, the passes and the importer build and drop graphs of Python objects
    (torch.fx's, onnx_ir's, onnx-graphsurgeon's); the survivors set off full collections,
    each of which walks every object in the process (torch's alone are ~240k). They took a
    quarter of a 1,000-node rewrite and 0.5-0.8 s of a ResNet-50 export, for garbage that
    holds no tensor memory (peak memory of ResNet-50 and ViT-B/16 rewrites unchanged).
    Paused, what the work leaves is collected once, young, after it. torch's distributed
    checkpointing pauses the collector the same way. Code that switches the collector off
    in another thread meanwhile finds it on again when the work ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._was_enabled = False

    @contextlib.contextmanager
    def __call__(self):
        with self._lock:
            if not self._inside:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if not self._inside and self._was_enabled:
                    gc.enable()


collector_paused = _CollectorPause()
