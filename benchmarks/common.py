"""What every benchmark script shares: silencing the exporters, measuring memory, marking goals
and storing results."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import resource
import warnings
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.json"


@contextlib.contextmanager
def quiet():
    """No exporter chatter, warnings or log lines while timing."""
    logging.disable(logging.WARNING)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def store(results: dict) -> Path:
    """Merge ``results`` (by top-level key) into results.json, keeping the other scripts' keys."""
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    stored.update(results)
    RESULTS.write_text(json.dumps(stored, indent=2))
    return RESULTS


def _status_mb(field: str) -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def rss_mb() -> float:
    """This process's resident memory now (0 where /proc does not say)."""
    return _status_mb("VmRSS") or 0.0


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux keeps
    ru_maxrss across exec, so a process started by a large parent reports the parent's peak."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ok(condition: bool) -> str:
    """How a goal's row ends."""
    return "ok" if condition else "MISSED"
