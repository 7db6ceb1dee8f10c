"""Alerts that reach a person: the Alertmanager and webhook sinks, ``streamrnn alerts list`` and
``streamrnn explain``. See docs/alerts.md for the delivery semantics."""

from .incidents import Notice, Recovery
from .message import Alert, MessageError
from .sinks import AlertSinks, validate_alerts_config

__all__ = ["Alert", "AlertSinks", "MessageError", "Notice", "Recovery", "validate_alerts_config"]
