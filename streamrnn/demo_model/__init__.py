"""The shipped demo model, under its documented name: it lives in :mod:`streamrnn.tools.demo_model`.

``python -m streamrnn.demo_model.build`` and ``streamrnn.demo_model.path()`` keep working.
"""

from __future__ import annotations

from ..tools.demo_model import path

__all__ = ["path"]
