"""``python -m rewriter``: the ``shaprewrite`` command."""

import sys

from .cli import main

sys.exit(main())
