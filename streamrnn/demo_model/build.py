"""``python -m streamrnn.demo_model.build``: rebuilds the shipped demo model (see
:mod:`streamrnn.tools.demo_model.build`)."""

from __future__ import annotations

import sys

from ..tools.demo_model.build import build, main

__all__ = ["build", "main"]

if __name__ == "__main__":
    sys.exit(main())
