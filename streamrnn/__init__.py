"""streamrnn: real-time anomaly detection for keyed streams with stateful recurrent forecasters."""

__version__ = "0.1.0"

__all__ = ["__version__"]
