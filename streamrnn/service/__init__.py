"""The long-lived service: Kafka consumer loop, codec, dead letters, alerts, checkpoints, metrics."""
