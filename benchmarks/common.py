"""What every benchmark script shares: silencing the exporters and storing results."""

from __future__ import annotations

import contextlib
import io
import json
import logging
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
