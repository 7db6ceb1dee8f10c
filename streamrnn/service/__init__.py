"""The long-lived service, in the order of one poll: consume, decode, the engine side, alerts,
publish, partitions, checkpoints; health, metrics and the HTTP endpoint; ``app.Detector``."""
