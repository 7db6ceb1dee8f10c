"""Real kafka-python clients and the preflight check against a TLS / SASL broker on loopback.

The broker is Tansu behind tests/kafkagate.py (TLS termination, and the broker side of Kafka's
SASL handshake); certificates are made by tests/certs.py. Every client here is kafka-python's
own, configured only through ``service.kafka`` and :func:`client_options`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from certs import KEY_PASSWORD, Pki
from kafkagate import KafkaGate, SaslServer, TansuBehind, gated_broker, server_tls, side_gate

from streamrnn.config import ConfigError, KafkaConfig, load_config
from streamrnn.service.kafka_security import client_options, security_options
from streamrnn.service.preflight import BrokerUnreachable, ConnectionSetupError, check_cluster

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PASSWORD = "alice-Pa55-w0rd"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_cluster(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KafkaGate, TansuBehind]]:
    """TLS with optional client certificates (verified against the CA)."""
    gate = KafkaGate(tls=server_tls(pki.server.cert, pki.server.key, pki.ca.cert_path))
    with gated_broker(gate, tmp_path_factory.mktemp("tansu") / "tls.log") as cluster:
        yield cluster


TOKENS: set[str] = {"token-one"}


@pytest.fixture(scope="module")
def sasl_cluster(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KafkaGate, TansuBehind]]:
    """SASL_SSL: PLAIN, SCRAM and OAUTHBEARER; logins last 2 s, so clients log in again."""
    sasl = SaslServer(
        users={"alice": PASSWORD}, tokens=lambda: set(TOKENS), session_lifetime_ms=2000
    )
    gate = KafkaGate(tls=server_tls(pki.server.cert, pki.server.key), sasl=sasl)
    with gated_broker(gate, tmp_path_factory.mktemp("tansu") / "sasl.log") as cluster:
        yield cluster


def kafka_config(**keys: Any) -> KafkaConfig:
    return load_config({"service": {"kafka": keys}}).service.kafka


def tls_keys(pki: Pki, **more: Any) -> dict[str, Any]:
    return {"security_protocol": "SSL", "ssl_cafile": str(pki.ca.cert_path), **more}


def sasl_keys(pki: Pki, mechanism: str, **more: Any) -> dict[str, Any]:
    keys: dict[str, Any] = {"security_protocol": "SASL_SSL", "ssl_cafile": str(pki.ca.cert_path),
                            "sasl_mechanism": mechanism}  # fmt: skip
    if mechanism != "OAUTHBEARER":
        keys.update(sasl_username="alice", sasl_password=PASSWORD)
    return {**keys, **more}


def round_trip(address: str, kafka: KafkaConfig, n: int = 20) -> dict[str, Any]:
    """Create a topic, produce ``n`` records, consume them in a group and commit: all through
    kafka-python with ``client_options``. Returns what was read and committed."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    topic = f"sec-{uuid.uuid4().hex[:10]}"
    security = security_options(kafka)
    common = {"bootstrap_servers": [address], "bootstrap_timeout_ms": 10_000}
    admin = KafkaAdminClient(**common, **client_options(kafka, "admin", security))
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()
    producer = KafkaProducer(**common, acks="all", **client_options(kafka, "producer", security))
    for i in range(n):
        producer.send(topic, key=b"k", value=str(i).encode())
    producer.flush(timeout=10)
    producer.close()
    consumer = KafkaConsumer(**common, group_id=topic, auto_offset_reset="earliest",
                             enable_auto_commit=False, max_poll_interval_ms=6000,
                             session_timeout_ms=6000, heartbeat_interval_ms=1000,
                             **client_options(kafka, "consumer", security))  # fmt: skip
    try:
        consumer.subscribe([topic])
        seen: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(seen) < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                seen += [r.value for r in records]
        consumer.commit()
        committed = consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close()
    return {"values": seen, "committed": committed}


def preflight(address: str, kafka: KafkaConfig, timeout_s: float = 3.0) -> str:
    return check_cluster([address], kafka, security_options(kafka), timeout_s)


# ---------------------------------------------------------------------------------------------
# TLS


def test_tls_without_client_certificate(
    pki: Pki, tls_cluster: tuple[KafkaGate, TansuBehind]
) -> None:
    gate, _ = tls_cluster
    kafka = kafka_config(**tls_keys(pki))
    assert preflight(gate.address, kafka) == gate.address
    got = round_trip(gate.address, kafka)
    assert got["values"] == [str(i).encode() for i in range(20)]
    assert got["committed"] == 20
    assert None in gate.client_certs


def test_mutual_tls_with_an_encrypted_key(
    pki: Pki, tls_cluster: tuple[KafkaGate, TansuBehind], tmp_path: Path
) -> None:
    gate, _ = tls_cluster
    pw = tmp_path / "key-password"
    pw.write_text(KEY_PASSWORD + "\n")
    kafka = kafka_config(**tls_keys(pki, ssl_certfile=str(pki.client.cert),
                                    ssl_keyfile=str(pki.client.key), ssl_password={"file": str(pw)}))  # fmt: skip
    before = len(gate.client_certs)
    assert preflight(gate.address, kafka) == gate.address
    assert round_trip(gate.address, kafka, n=5)["committed"] == 5
    assert set(gate.client_certs[before:]) == {"commonName=client"}


@pytest.mark.parametrize(
    ("case", "setting", "cause"),
    [
        ("wrong_ca", "service.kafka.ssl_cafile: does not hold the CA", "self-signed certificate in certificate chain"),
        ("hostname", "service.bootstrap_servers: the certificate of the broker", "does not name '127.0.0.1'"),
        ("expired", "service.bootstrap_servers: the certificate of the broker", "has expired"),
        ("revoked", "service.kafka.ssl_crlfile: revokes the certificate", "certificate revoked"),
        ("tls_to_plaintext", "service.kafka.security_protocol: the broker", "does not speak TLS"),
        ("plaintext_to_tls", "service.kafka.security_protocol: the broker", "is it a TLS listener"),
        ("cert_required", "service.kafka.ssl_certfile: the broker", "requires a client certificate"),
        ("cert_refused", "service.kafka.ssl_certfile: the broker", "refused the client certificate"),
    ],
)  # fmt: skip
def test_tls_failures_name_the_setting_and_the_cause(
    case: str, setting: str, cause: str, pki: Pki, tls_cluster: tuple[KafkaGate, TansuBehind]
) -> None:
    gate, behind = tls_cluster
    address, keys, extra = gate.address, tls_keys(pki), None
    if case == "wrong_ca":
        keys["ssl_cafile"] = str(pki.other.cert_path)
    elif case == "hostname":
        extra = side_gate(behind, tls=server_tls(pki.wrong_name.cert, pki.wrong_name.key))
    elif case == "expired":
        extra = side_gate(behind, tls=server_tls(pki.expired.cert, pki.expired.key))
    elif case == "revoked":
        keys["ssl_crlfile"] = str(pki.ca.revoke(pki.server))
    elif case == "tls_to_plaintext":
        address = f"127.0.0.1:{behind.port}"  # the broker's own plaintext listener
    elif case == "plaintext_to_tls":
        keys = {}
    else:
        extra = side_gate(
            behind, tls=server_tls(pki.server.cert, pki.server.key, pki.ca.cert_path, require=True)
        )
        if case == "cert_refused":
            keys.update(ssl_certfile=str(pki.stranger.cert), ssl_keyfile=str(pki.stranger.key))
    try:
        with pytest.raises(ConnectionSetupError) as err:
            preflight(extra.address if extra else address, kafka_config(**keys))
    finally:
        if extra is not None:
            extra.stop()
    message = str(err.value)
    assert message.startswith(setting) and cause in message, message
    assert "\n" not in message
    assert isinstance(err.value, ConfigError)  # the command exits with status 2


def test_unreachable_broker_is_retryable(
    pki: Pki, tls_cluster: tuple[KafkaGate, TansuBehind]
) -> None:
    gate, _ = tls_cluster
    with pytest.raises(BrokerUnreachable, match="Connection refused"):
        preflight("127.0.0.1:1", kafka_config(**tls_keys(pki)))
    # one of several servers away: the next one answers
    assert check_cluster(["127.0.0.1:1", gate.address], kafka_config(**tls_keys(pki)),
                         security_options(kafka_config(**tls_keys(pki)))) == gate.address  # fmt: skip


# ---------------------------------------------------------------------------------------------
# SASL


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"])
def test_sasl_login_and_round_trip(
    mechanism: str, pki: Pki, sasl_cluster: tuple[KafkaGate, TansuBehind], tmp_path: Path
) -> None:
    gate, _ = sasl_cluster
    token = tmp_path / "token"
    token.write_text("token-one")
    extra = {"sasl_oauth_token": {"file": str(token)}} if mechanism == "OAUTHBEARER" else {}
    kafka = kafka_config(**sasl_keys(pki, mechanism, **extra))
    before = len(gate.logins)
    assert preflight(gate.address, kafka) == gate.address
    got = round_trip(gate.address, kafka, n=10)
    assert got["committed"] == 10 and len(got["values"]) == 10
    logins = gate.logins[before:]
    assert logins and all(x.ok and x.mechanism == mechanism for x in logins)
    if mechanism != "OAUTHBEARER":
        assert {x.principal for x in logins} == {"alice"}


@pytest.mark.parametrize(
    ("mechanism", "keys", "setting", "cause"),
    [
        ("PLAIN", {"sasl_password": "Wr0ng-Pa55"}, "service.kafka.sasl_password: the broker", "refused the PLAIN login of user 'alice'"),
        ("SCRAM-SHA-512", {"sasl_password": "Wr0ng-Pa55"}, "service.kafka.sasl_password: the broker", "refused the SCRAM-SHA-512 login of user 'alice'"),
        ("SCRAM-SHA-512", {"sasl_username": "mallory"}, "service.kafka.sasl_password: the broker", "login of user 'mallory'"),
        ("OAUTHBEARER", {"sasl_oauth_token": "expired-token"}, "service.kafka.sasl_oauth_token: the broker", "refused the OAUTHBEARER token"),
        ("SSL", {}, "service.kafka.security_protocol: the broker", "does the listener want SASL"),
    ],
)  # fmt: skip
def test_sasl_failures_name_the_setting(
    mechanism: str,
    keys: dict[str, str],
    setting: str,
    cause: str,
    pki: Pki,
    sasl_cluster: tuple[KafkaGate, TansuBehind],
) -> None:
    gate, _ = sasl_cluster
    config = tls_keys(pki) if mechanism == "SSL" else sasl_keys(pki, mechanism, **keys)
    with pytest.raises(ConnectionSetupError) as err:
        preflight(gate.address, kafka_config(**config))
    message = str(err.value)
    assert message.startswith(setting) and cause in message, message
    assert (
        "Wr0ng-Pa55" not in message and "expired-token" not in message and PASSWORD not in message
    )


def test_mechanism_the_broker_does_not_enable(tmp_path: Path) -> None:
    gate = KafkaGate(sasl=SaslServer(users={"alice": PASSWORD}, mechanisms=("SCRAM-SHA-512",)))
    with gated_broker(gate, tmp_path / "tansu.log"):
        kafka = kafka_config(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                             sasl_username="alice", sasl_password=PASSWORD)  # fmt: skip
        with pytest.raises(
            ConnectionSetupError,
            match=r"^service.kafka.sasl_mechanism: the broker at \S+ does not enable PLAIN \(it offers SCRAM-SHA-512\)",
        ):
            preflight(gate.address, kafka)
        ok = kafka_config(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                          sasl_username="alice", sasl_password=PASSWORD)  # fmt: skip
        assert round_trip(gate.address, ok, n=3)["committed"] == 3


def test_kafka_python_alone_retries_a_wrong_password_silently(
    pki: Pki, sasl_cluster: tuple[KafkaGate, TansuBehind]
) -> None:
    """Why the preflight exists: kafka-python reports only a bootstrap timeout."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaTimeoutError

    gate, _ = sasl_cluster
    kafka = kafka_config(**sasl_keys(pki, "SCRAM-SHA-512", sasl_password="wrong"))
    before = len(gate.logins)
    with pytest.raises(KafkaTimeoutError, match="Unable to bootstrap"):
        KafkaAdminClient(
            bootstrap_servers=[gate.address],
            bootstrap_timeout_ms=1500,
            **client_options(kafka, "admin"),
        )
    assert sum(not x.ok for x in gate.logins[before:]) >= 2  # it tried again and again


def test_no_secret_in_the_debug_log_of_real_logins(
    pki: Pki,
    sasl_cluster: tuple[KafkaGate, TansuBehind],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kafka-python logs its configuration and each request's bytes at DEBUG: a PLAIN login
    carries the password, an OAUTHBEARER login the token."""
    gate, _ = sasl_cluster
    token = tmp_path / "token"
    token.write_text("token-one")
    logging.getLogger("kafka").setLevel(
        logging.WARNING
    )  # what `streamrnn run` sets; caplog lifts it
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="kafka"):
        round_trip(gate.address, kafka_config(**sasl_keys(pki, "PLAIN")), n=2)
        round_trip(
            gate.address,
            kafka_config(**sasl_keys(pki, "OAUTHBEARER", sasl_oauth_token={"file": str(token)})),
            n=2,
        )
    text = caplog.text
    assert "SaslAuthenticateRequest" in text and "sasl_plain_password" in text  # what was logged
    assert PASSWORD not in text and "token-one" not in text
    assert "\\x00alice\\x00***" in text  # the PLAIN login's bytes, masked


def test_rotated_token_file_is_used_at_the_next_login(
    pki: Pki, sasl_cluster: tuple[KafkaGate, TansuBehind], tmp_path: Path
) -> None:
    """A projected token is swapped under a running client; the broker revokes the old one; the
    client's next login (KIP-368 re-authentication, every 2 s here) sends the new token."""
    from kafka import KafkaProducer

    gate, _ = sasl_cluster
    token = tmp_path / "token"
    token.write_text("token-one")
    kafka = kafka_config(**sasl_keys(pki, "OAUTHBEARER", sasl_oauth_token={"file": str(token)}))
    provider = (opts := client_options(kafka, "producer"))["sasl_oauth_token_provider"]
    producer = KafkaProducer(bootstrap_servers=[gate.address], **opts)
    try:
        producer.send("rotation", b"before").get(timeout=10)
        before = len(gate.logins)
        new = tmp_path / "token.new"
        new.write_text("token-two")
        new.replace(token)
        TOKENS.clear()
        TOKENS.add("token-two")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(
            x.reauthentication and x.ok for x in gate.logins[before:]
        ):
            time.sleep(0.2)
        producer.send("rotation", b"after").get(timeout=10)
    finally:
        producer.close()
        TOKENS.clear()
        TOKENS.add("token-one")
    later = gate.logins[before:]
    assert any(x.reauthentication and x.ok for x in later), later
    assert not any(not x.ok for x in later), later  # never a login with the revoked token
    assert provider.reads >= 2
