"""Helpers of the fault suite: topics deleted and counted, scores counted by source."""

from __future__ import annotations

import time
from typing import Any

from servicetools import TopicReader, scores_by_source


def produce_raw(
    bs: str, topic: str, messages: list[tuple[bytes | None, bytes | None]], **options: Any
) -> None:
    """Send raw ``(key, value)`` messages (tombstones and odd bytes too), each acknowledged;
    ``options`` go to the KafkaProducer (a raised ``max_request_size``, as many producers have)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bs, acks="all", **options)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in messages]
        producer.flush(timeout=30)
        for f in futures:
            f.get(timeout=30)
    finally:
        producer.close(timeout=5)


def delete_topic(bs: str, topic: str, timeout: float = 15.0) -> None:
    """Delete ``topic`` and wait until the metadata no longer lists it."""
    from streamrnn.service.clients import admin_client

    admin = admin_client(bs)
    try:
        admin.delete_topics([topic])
        deadline = time.monotonic() + timeout
        while topic in set(admin.list_topics()):
            assert time.monotonic() < deadline, f"{topic} still listed {timeout:g} s after delete"
            time.sleep(0.1)
    finally:
        admin.close()


def partition_count(bs: str, topic: str) -> int:
    from streamrnn.service.clients import admin_client

    admin = admin_client(bs)
    try:
        (d,) = admin.describe_topics([topic])
        return len(d["partitions"])
    finally:
        admin.close()


def scored(bs: str, topic: str, want: int, timeout: float, what: str) -> dict[Any, list[Any]]:
    """The score messages of ``topic`` by source, once ``want`` distinct sources are there."""
    reader = TopicReader(bs, topic)
    try:
        reader.read_until(lambda r: len(scores_by_source(r)) >= want, timeout, what)
        reader.poll(300)
        return scores_by_source(reader.records)
    finally:
        reader.close()
