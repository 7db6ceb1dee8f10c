"""Demo and test tools: the embedded broker, synthetic streams, the producer, the demo tour and its shipped model."""
