"""Exports and runs of torch modules, kept apart across threads.

While torch traces a model for export it patches ``torch.nn.Module.__call__`` (and
``__getattr__``) for the whole process: a module called from another thread meanwhile goes
through the tracer, which then fails ("Unexpected key ...") or records the call into the
export. So an export waits until no run is under way and holds new runs back until it ends;
runs overlap each other freely. Exports also exclude each other (torch's exporters are not
re-entrant, and silencing them touches process-wide logger levels and warning filters).
"""

from __future__ import annotations

import contextlib
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
