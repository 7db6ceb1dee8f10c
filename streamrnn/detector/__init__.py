"""The algorithm, without Kafka: model, features, scoring, per-key state, the engine and the model directory."""
