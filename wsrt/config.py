"""Settings for every wsrt command, from one place.

Command-line flags win over environment variables, which win over a ``.env``
file in the current working directory. This module is the only reader of
``os.environ`` and ``.env`` in wsrt: commands build a :class:`Settings` at the
edge and pass it down.

Every variable is declared once, as a field of :class:`Settings` with its name,
default, parser, help and group; :data:`VARIABLES` lists them for the README,
the runbook and the drift tests.
An invalid value raises :class:`~wsrt.errors.ConfigError`, whose message is the
single line the CLI prints before exiting with status 2.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from wsrt.errors import ConfigError
from wsrt.jwks import ASYMMETRIC_ALGORITHMS, read_pem_files
from wsrt.outlet import POLICIES
from wsrt.tokens import HMAC_ALGORITHMS
from wsrt.wire import FORMATS, SCHEMA_FORMATS

#: Secrets shorter than this are accepted with a warning (the runbook's own
#: examples use ``dev-secret``); RFC 7518 asks for at least 256 bits for HS256.
MIN_SECRET_BYTES = 32

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_ORIGIN_RE = re.compile(
    r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>(\*\.)?[^/:*\s]+)(:(?P<port>\d+))?$"
)


# -- parsers: str -> value, raising ValueError with the problem -----------------


def _parse_host_port(raw: str, *, host_required: bool) -> tuple[str, int]:
    text = raw.strip()
    if text.startswith("["):  # [v6]:port
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [ipv6]:port, got {raw!r}")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"expected host:port or :port, got {raw!r}")
    if host_required and not host:
        raise ValueError(f"missing host in {raw!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {raw!r}")
    return host, int(port)


def _bind_address(raw: str) -> tuple[str, int]:
    host, port = _parse_host_port(raw, host_required=False)
    if host:
        try:
            socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
                raise ValueError(f"{host!r} is not an IP address or host name") from None
    return host, port


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _brokers(raw: str) -> tuple[str, ...]:
    brokers = _csv(raw)
    if not brokers:
        raise ValueError("needs at least one host:port")
    for broker in brokers:
        _parse_host_port(broker, host_required=True)
    return brokers


def _topics(raw: str) -> tuple[str, ...]:
    topics = _csv(raw)
    if not topics:
        raise ValueError("needs at least one topic")
    for topic in topics:
        if not _TOPIC_RE.match(topic) or topic in (".", ".."):
            raise ValueError(
                f"{topic!r} is not a Kafka topic name (letters, digits, '.', '_', '-')"
            )
    if len(set(topics)) != len(topics):
        raise ValueError("lists a topic twice")
    return topics


def _origins(raw: str) -> tuple[str, ...]:
    origins = _csv(raw)
    for origin in origins:
        if origin != "*" and not _ORIGIN_RE.match(origin.lower()):
            raise ValueError(
                f"{origin!r} is not an origin like https://app.example.com[:port] "
                "or https://*.example.com"
            )
    return tuple(o.lower() for o in origins)


def _non_empty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _optional(raw: str) -> str | None:
    return raw.strip() or None


def _secret(raw: str) -> str | None:
    return raw or None


def _positive_int(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")
    return value


def _non_negative_int(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def _seconds(raw: str, *, allow_zero: bool) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(
            f"must be {'zero or more' if allow_zero else 'more than zero'}, got {raw!r}"
        )
    return value


def _positive_seconds(raw: str) -> float:
    return _seconds(raw, allow_zero=False)


def _seconds_or_zero(raw: str) -> float:
    return _seconds(raw, allow_zero=True)


def _choice(*choices: str, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _per_topic(
    what: str, choices: tuple[str, ...], example: str
) -> Callable[[str], tuple[tuple[str, str], ...]]:
    """A parser of ``topic=value`` pairs, each value one of ``choices``."""

    def parse(raw: str) -> tuple[tuple[str, str], ...]:
        pairs: list[tuple[str, str]] = []
        for item in _csv(raw):
            topic, sep, value = (part.strip() for part in item.partition("="))
            if not sep or not topic:
                raise ValueError(f"expected topic={what} pairs like {example}, got {item!r}")
            value = value.lower()
            if value not in choices:
                raise ValueError(f"{value!r} for {topic} is not one of {', '.join(choices)}")
            if topic in dict(pairs):
                raise ValueError(f"names {topic} twice")
            pairs.append((topic, value))
        return tuple(pairs)

    return parse


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(f"must be true or false (1/0, yes/no, on/off), got {raw!r}")
    return value in _TRUE


def _workers(raw: str) -> int:
    if raw.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        return _positive_int(raw)
    except ValueError:
        raise ValueError(f"must be a positive whole number or auto, got {raw!r}") from None


def _algorithms(raw: str) -> tuple[str, ...]:
    allowed = {a.upper(): a for a in (*HMAC_ALGORITHMS, *ASYMMETRIC_ALGORITHMS)}
    algorithms = tuple(allowed.get(a.upper(), a) for a in _csv(raw))
    if not algorithms:
        raise ValueError("needs at least one of " + ", ".join(allowed.values()))
    for algorithm in algorithms:
        if algorithm not in allowed.values():
            raise ValueError(f"{algorithm!r} is not one of {', '.join(allowed.values())}")
    return algorithms


def _ws_url(raw: str) -> str:
    url = raw.strip()
    if not re.match(r"^wss?://[^/\s]+(/\S*)?$", url):
        raise ValueError(f"must be a ws:// or wss:// URL, got {raw!r}")
    return url


def _http_url(raw: str) -> str | None:
    url = raw.strip()
    if not url:
        return None
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        raise ValueError(f"must be an http:// or https:// URL, got {raw!r}")
    return url


def _default_replica_id() -> str:
    # Two processes on one host never share a broadcast group.
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Variable:
    """One ``WS_*`` setting: its field of :class:`Settings`, default, parser and meaning."""

    name: str
    attr: str
    default: str | None
    parse: Callable[[str], Any]
    help: str
    #: server, kafka, auth or client: who reads it.
    group: str


def _var(name: str, default: str | None, parse: Callable[[str], Any], help: str, group: str) -> Any:
    """Declare a :class:`Settings` field as the setting ``name`` (its one declaration)."""
    return dataclasses.field(
        metadata={"setting": {"name": name, "default": default, "parse": parse, "help": help,
                              "group": group}}
    )  # fmt: skip


_S, _K, _A, _C = "server", "kafka", "auth", "client"


@dataclass(frozen=True)
class Settings:
    """Validated settings, one field per ``WS_*`` variable. Build with :func:`load_settings`."""

    # fmt: off
    # -- server ----------------------------------------------------------------
    bind_address: tuple[str, int] = _var("WS_BIND_ADDRESS", ":8080", _bind_address,
        "Listen address, host:port or :port (all interfaces).", _S)
    allowed_origins: tuple[str, ...] = _var("WS_ALLOWED_ORIGINS", "", _origins,
        "Origin allow list, comma-separated; empty allows all origins.", _S)
    client_buffer: int = _var("WS_CLIENT_BUFFER", "256", _positive_int,
        "Per-client outbound queue in messages; past it the topic's slow-consumer policy acts.",
        _S)
    slow_consumer_policy: str = _var("WS_SLOW_CONSUMER_POLICY", "disconnect", _choice(*POLICIES),
        "What a full queue does: disconnect (close 1008), conflate (newest per key), drop (gap).",
        _S)
    topic_policy_overrides: tuple[tuple[str, str], ...] = _var("WS_TOPIC_POLICIES", "",
        _per_topic("policy", POLICIES, "order_book=conflate"),
        "Per-topic policies overriding it, e.g. order_book=conflate,lines=drop.", _S)
    compression: str = _var("WS_COMPRESSION", "none", _choice("none", "deflate"),
        "deflate: offer permessage-deflate (no context takeover), each frame compressed "
        "once for every client that accepts it; none: plain frames.", _S)
    send_buffer_bytes: int = _var("WS_SEND_BUFFER_BYTES", "262144", _non_negative_int,
        "Kernel send buffer per client socket (0: OS autotuning, up to megabytes).", _S)
    shutdown_timeout: float = _var("WS_SHUTDOWN_TIMEOUT_SECONDS", "10", _positive_seconds,
        "Bound on the whole graceful shutdown.", _S)
    close_timeout: float = _var("WS_CLOSE_TIMEOUT_SECONDS", "5", _positive_seconds,
        "How long a client may take to answer a close frame before it is dropped.", _S)
    fanout_mode: str = _var("WS_FANOUT_MODE", "broadcast", _choice("broadcast", "shared"),
        "broadcast: every replica gets every message; shared: one group splits partitions.", _S)
    replica_id: str = _var("WS_REPLICA_ID", "", _optional,
        "This replica's identity in broadcast mode (default: host name + random suffix).", _S)
    max_subscriptions: int = _var("WS_MAX_SUBSCRIPTIONS", "100", _positive_int,
        "Subscriptions per connection; beyond it too_many_subscriptions.", _S)
    max_channel_bytes: int = _var("WS_MAX_CHANNEL_BYTES", "256", _positive_int,
        "Longest channel name in bytes (topic:key); beyond it bad_request.", _S)
    max_filter_bytes: int = _var("WS_FILTER_MAX_BYTES", "4096", _positive_int,
        "Largest subscribe filter (its JSON) in bytes, nesting at most 8 deep; beyond it "
        "bad_request.", _S)
    max_frame_bytes: int = _var("WS_MAX_FRAME_BYTES", "65536", _positive_int,
        "Largest client frame in bytes; beyond it close 1009.", _S)
    control_rate: int = _var("WS_CONTROL_RATE", "20", _positive_int,
        "Client control messages per second (burst of as many); beyond it rate_limited.", _S)
    max_client_errors: int = _var("WS_MAX_CLIENT_ERRORS", "20", _positive_int,
        "Errors a connection may cause within the error window before it is closed 1008.", _S)
    client_error_window: float = _var("WS_CLIENT_ERROR_WINDOW_SECONDS", "10", _positive_seconds,
        "Window over which a connection's errors count towards WS_MAX_CLIENT_ERRORS.", _S)
    replay_max_messages: int = _var("WS_REPLAY_MAX_MESSAGES", "100000", _positive_int,
        "Most history records one subscribe may replay (since, since_time, rewind).", _S)
    replay_concurrency: int = _var("WS_REPLAY_CONCURRENCY", "8", _positive_int,
        "Replays reading from Kafka at once; others wait their turn.", _S)
    replay_rate: int = _var("WS_REPLAY_RATE", "20000", _positive_int,
        "History records per second read by all replays together (protects live latency).", _S)
    state_topics: tuple[str, ...] = _var("WS_STATE_TOPICS", "", _csv,
        "Topics whose newest value per key is kept (state); their tombstones are delete events.",
        _S)
    state_lookback: float = _var("WS_STATE_LOOKBACK", "0", _seconds_or_zero,
        "Seconds of history a state topic is loaded from at start; 0: from the log start.", _S)
    state_max_keys: int = _var("WS_STATE_MAX_KEYS", "100000", _positive_int,
        "Most keys kept per state topic; past it the key updated longest ago is evicted.", _S)
    state_max_bytes: int = _var("WS_STATE_MAX_BYTES", "67108864", _positive_int,
        "Most bytes kept per state topic (frames and keys); past it, eviction as above.", _S)
    ping_interval: float = _var("WS_PING_INTERVAL_SECONDS", "20", _seconds_or_zero,
        "Server keepalive ping interval; 0 disables keepalive.", _S)
    sse_heartbeat: float = _var("WS_SSE_HEARTBEAT_SECONDS", "15", _positive_seconds,
        "A comment line on every /sse stream this often, for proxies that end idle responses; "
        "a stream whose socket took nothing for a whole interval is closed (unless "
        "WS_PING_INTERVAL_SECONDS is 0).", _S)
    workers: int = _var("WS_WORKERS", "1", _workers,
        "Server processes sharing the port (SO_REUSEPORT), each a full consumer; auto: one per "
        "CPU.", _S)
    console: bool = _var("WS_CONSOLE", "false", _bool,
        "Serve the operator console page at /console (on in wsrt dev).", _S)
    latency_sample_every: int = _var("WS_LATENCY_SAMPLE_EVERY", "0", _non_negative_int,
        "Log latency_sample (the time at each stage) for records whose offset is a multiple of "
        "this; 0: off.", _S)
    log_format: str = _var("WS_LOG_FORMAT", "text", _choice("text", "json"),
        "text ([ws-realtime] prefix) or json (one object per line).", _S)
    log_level: str = _var(
        "WS_LOG_LEVEL", "INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR", upper=True),
        "Log level.", _S)
    # -- kafka -----------------------------------------------------------------
    kafka_brokers: tuple[str, ...] = _var("WS_KAFKA_BROKERS", "localhost:9092", _brokers,
        "Comma-separated Kafka bootstrap servers.", _K)
    kafka_group_id: str = _var("WS_KAFKA_GROUP_ID", "ws-realtime", _non_empty,
        "Consumer group id (broadcast mode appends -<WS_REPLICA_ID>).", _K)
    kafka_topics: tuple[str, ...] = _var("WS_KAFKA_TOPICS", "lines,order_book,analytics", _topics,
        "Topics to serve; each is a channel.", _K)
    kafka_offset_reset: str = _var("WS_KAFKA_OFFSET_RESET", "latest", _choice("latest", "earliest"),
        "shared mode: where a group without committed offsets starts.", _K)
    kafka_max_batch: int = _var("WS_KAFKA_MAX_BATCH", "1000", _positive_int,
        "Most records handed to the hub in one batch (bounds memory).", _K)
    kafka_fetch_max_wait: float = _var("WS_KAFKA_FETCH_MAX_WAIT_SECONDS", "0.1", _positive_seconds,
        "Longest a fetch waits for data (some brokers always wait it: latency).", _K)
    kafka_metadata_refresh: float = _var(
        "WS_KAFKA_METADATA_REFRESH_SECONDS", "10", _positive_seconds,
        "How often new topics and partitions are looked for (broadcast mode).", _K)
    kafka_request_timeout: float = _var("WS_KAFKA_REQUEST_TIMEOUT_SECONDS", "10", _positive_seconds,
        "Longest one Kafka request may wait for its answer.", _K)
    kafka_start_timeout: float = _var("WS_KAFKA_START_TIMEOUT_SECONDS", "15", _positive_seconds,
        "Bound on connecting, a metadata lookup or positioning before a retry.", _K)
    kafka_stop_timeout: float = _var("WS_KAFKA_STOP_TIMEOUT_SECONDS", "5", _positive_seconds,
        "Bound on stopping a consumer (leaving the group).", _K)
    kafka_commit_timeout: float = _var("WS_KAFKA_COMMIT_TIMEOUT_SECONDS", "5", _positive_seconds,
        "Bound on one offset commit, the final one at shutdown included.", _K)
    kafka_stall: float = _var("WS_KAFKA_STALL_SECONDS", "30", _positive_seconds,
        "Replace the consumer when records wait this long and none is delivered.", _K)
    kafka_probe_interval: float = _var("WS_KAFKA_PROBE_SECONDS", "2", _positive_seconds,
        "How often the brokers are probed (readiness, stall detection).", _K)
    kafka_backoff_initial: float = _var(
        "WS_KAFKA_BACKOFF_INITIAL_SECONDS", "0.5", _positive_seconds,
        "First wait before reconnecting to Kafka (doubles, with jitter).", _K)
    kafka_backoff_max: float = _var("WS_KAFKA_BACKOFF_MAX_SECONDS", "2", _positive_seconds,
        "Longest wait between Kafka reconnect attempts.", _K)
    topic_formats: tuple[tuple[str, str], ...] = _var("WS_TOPIC_FORMATS", "",
        _per_topic("format", FORMATS, "audit=string"),
        "Per-topic value formats, e.g. audit=string,blobs=bytes,orders=avro: json (the "
        "default) is embedded, string becomes a JSON string, bytes base64; avro, protobuf "
        "and json-schema are decoded with schemas from WS_SCHEMA_REGISTRY_URL.", _K)
    schema_registry_url: str | None = _var("WS_SCHEMA_REGISTRY_URL", "", _http_url,
        "A Confluent-compatible Schema Registry (for avro, protobuf and json-schema topics), e.g. "
        "http://registry:8081 or Apicurio's http://registry:8080/apis/ccompat/v7.", _K)
    schema_registry_username: str | None = _var("WS_SCHEMA_REGISTRY_USERNAME", "", _optional,
        "Schema Registry basic auth user.", _K)
    schema_registry_password: str | None = _var("WS_SCHEMA_REGISTRY_PASSWORD", "", _secret,
        "Schema Registry basic auth password.", _K)
    schema_registry_cafile: str | None = _var("WS_SCHEMA_REGISTRY_CAFILE", "", _optional,
        "CA bundle for an https Schema Registry (default: system trust store).", _K)
    headers: tuple[str, ...] = _var("WS_HEADERS", "", _csv,
        "Kafka headers forwarded in the envelope's headers (names, or * for all).", _K)
    kafka_isolation_level: str = _var(
        "WS_KAFKA_ISOLATION_LEVEL", "read_committed",
        _choice("read_committed", "read_uncommitted"),
        "Transactional records: read_committed never delivers an aborted one (nor one of an "
        "open transaction before it commits); read_uncommitted delivers all.", _K)
    kafka_security_protocol: str = _var(
        "WS_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
        _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL", upper=True),
        "Kafka security protocol.", _K)
    kafka_sasl_mechanism: str = _var(
        "WS_KAFKA_SASL_MECHANISM", "PLAIN",
        _choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", upper=True),
        "SASL mechanism when the protocol is SASL_* (OAUTHBEARER: tokens from "
        "WS_KAFKA_SASL_OAUTH_TOKEN_URL).", _K)
    kafka_sasl_username: str | None = _var("WS_KAFKA_SASL_USERNAME", "", _optional,
        "SASL user name.", _K)
    kafka_sasl_password: str | None = _var("WS_KAFKA_SASL_PASSWORD", "", _secret,
        "SASL password.", _K)
    kafka_sasl_oauth_token_url: str | None = _var("WS_KAFKA_SASL_OAUTH_TOKEN_URL", "",
        _http_url, "OAUTHBEARER: the OAuth token endpoint (client credentials grant; https "
        "trusts WS_KAFKA_SSL_CAFILE when set, else the system store).", _K)
    kafka_sasl_oauth_client_id: str | None = _var("WS_KAFKA_SASL_OAUTH_CLIENT_ID", "",
        _optional, "OAUTHBEARER: the OAuth client id.", _K)
    kafka_sasl_oauth_client_secret: str | None = _var("WS_KAFKA_SASL_OAUTH_CLIENT_SECRET", "",
        _secret, "OAUTHBEARER: the OAuth client secret.", _K)
    kafka_sasl_oauth_scope: str | None = _var("WS_KAFKA_SASL_OAUTH_SCOPE", "", _optional,
        "OAUTHBEARER: the scope to ask for (default: none, the endpoint's default).", _K)
    kafka_ssl_cafile: str | None = _var("WS_KAFKA_SSL_CAFILE", "", _optional,
        "CA bundle for SSL / SASL_SSL (default: system trust store).", _K)
    kafka_ssl_certfile: str | None = _var("WS_KAFKA_SSL_CERTFILE", "", _optional,
        "Client certificate for mutual TLS.", _K)
    kafka_ssl_check_hostname: bool = _var("WS_KAFKA_SSL_CHECK_HOSTNAME", "true", _bool,
        "Check that each broker's certificate is for the host name connected to (off: any "
        "certificate the CA signed is accepted for any broker).", _K)
    kafka_ssl_keyfile: str | None = _var("WS_KAFKA_SSL_KEYFILE", "", _optional,
        "Client private key for mutual TLS.", _K)
    # -- auth ------------------------------------------------------------------
    auth_secret: str | None = _var("WS_AUTH_SECRET", None, _secret,
        "HMAC secret for JWT validation (required by serve).", _A)
    auth_audience: str | None = _var("WS_AUTH_AUDIENCE", "", _optional,
        "Expected JWT aud; when set, tokens without it get 401.", _A)
    auth_leeway: float = _var("WS_AUTH_LEEWAY_SECONDS", "0", _seconds_or_zero,
        "Clock-skew leeway for exp, nbf and iat.", _A)
    auth_algorithms: tuple[str, ...] = _var("WS_AUTH_ALGORITHMS", "HS256", _algorithms,
        "Accepted JWT algorithms, never taken from the token: HS256/384/512 with "
        "WS_AUTH_SECRET; RS*, PS*, ES*, EdDSA with an identity provider's keys.", _A)
    auth_jwks_url: str | None = _var("WS_AUTH_JWKS_URL", "", _http_url,
        "An identity provider's JWKS (its public keys by kid), e.g. "
        "https://idp.example.com/realms/app/protocol/openid-connect/certs.", _A)
    auth_public_key_files: tuple[str, ...] = _var("WS_AUTH_PUBLIC_KEY_FILES", "", _csv,
        "PEM public keys tokens may be signed with (a file's kid is its name less the "
        "extension).", _A)
    auth_issuer: str | None = _var("WS_AUTH_ISSUER", "", _optional,
        "Required iss of an identity provider's tokens.", _A)
    auth_revocation_topic: str | None = _var("WS_AUTH_REVOCATION_TOPIC", "", _optional,
        "Kafka topic of revocations ({\"sub\":…} or {\"jti\":…} with an exp): matching "
        "connections close 1008 token revoked and the tokens are refused until exp.", _A)
    auth_jwks_refresh: float = _var("WS_AUTH_JWKS_REFRESH_SECONDS", "300", _positive_seconds,
        "How often the JWKS is fetched again.", _A)
    auth_jwks_min_refresh: float = _var("WS_AUTH_JWKS_MIN_REFRESH_SECONDS", "10",
        _positive_seconds,
        "A token with an unknown kid fetches the JWKS at most this often.", _A)
    # -- client commands (tail, check, loadtest) --------------------------------
    url: str = _var("WS_URL", "ws://localhost:8080/ws", _ws_url,
        "Server URL for the client commands (tail, check, loadtest).", _C)
    token: str | None = _var("WS_TOKEN", "", _secret,
        "Token for the client commands; default: minted from WS_AUTH_SECRET.", _C)
    # fmt: on
    #: Non-fatal remarks about the values (printed once by the CLI).
    warnings: tuple[str, ...] = ()

    @property
    def topic_policies(self) -> dict[str, str]:
        """Every served topic's slow-consumer policy.

        See docs/design.md, "A slow client harms nobody".
        """
        named = dict(self.topic_policy_overrides)
        return {t: named.get(t, self.slow_consumer_policy) for t in self.kafka_topics}

    @property
    def bind_host(self) -> str | None:
        """Host to bind, or ``None`` for all interfaces."""
        return self.bind_address[0] or None

    @property
    def bind_port(self) -> int:
        return self.bind_address[1]

    @property
    def group_id(self) -> str:
        """The consumer group this replica joins.

        See docs/design.md, "Delivery: once, in order, or told".
        """
        if self.fanout_mode == "broadcast":
            return f"{self.kafka_group_id}-{self.replica_id}"
        return self.kafka_group_id

    @property
    def http_url(self) -> str:
        """The HTTP base of :attr:`url`: ``ws://h:p/ws`` → ``http://h:p``."""
        scheme, _, rest = self.url.partition("://")
        host = rest.split("/", 1)[0]
        return f"{'https' if scheme == 'wss' else 'http'}://{host}"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


#: Every setting, in declaration order; the README, runbook and drift tests read it.
VARIABLES: tuple[Variable, ...] = tuple(
    Variable(attr=f.name, **f.metadata["setting"])
    for f in dataclasses.fields(Settings)
    if "setting" in f.metadata
)
_BY_NAME = {v.name: v for v in VARIABLES}


def tool_setting(name: str, environ: Mapping[str, str] | None = None) -> str:
    """A variable of the tools around the server (``WSRT_TEST_BROKER``, ``WSRT_CACHE_DIR``,
    ``XDG_CACHE_HOME``, ``TERM``, ``NO_COLOR``), stripped; ``""`` when unset.

    Not :class:`Settings`: no command takes them as flags. Read here so that
    this module stays the one reader of the environment.
    """
    env = os.environ if environ is None else environ
    return env.get(name, "").strip()


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment with ``extra``, for a child process (k6, the server)."""
    return {**os.environ, **extra}


def _secret_file(name: str, sources: Mapping[str, str], raw: str | None) -> str | None:
    """A secret's value from the file ``<name>_FILE`` names (a mounted Secret), if it does.

    The file's content is the value, less one trailing line break.
    """
    path = sources.get(f"{name}_FILE")
    if not path:
        return raw
    if sources.get(name):
        raise ConfigError(f"{name}_FILE", f"give {name} or {name}_FILE, not both")
    try:
        content = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{name}_FILE", f"cannot read {path}: {reason}") from None
    return content.removesuffix("\n").removesuffix("\r")


def _together(values: dict[str, Any], require_secret: bool) -> list[str]:
    """Checks of settings against each other: raises :class:`ConfigError`, or returns
    the warnings (printed once by the CLI)."""
    warnings: list[str] = []
    secret = values["auth_secret"]
    if require_secret and secret is None:
        raise ConfigError(
            "WS_AUTH_SECRET", "is required (the HMAC secret that signs client tokens)"
        )
    if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
        warnings.append(
            f"WS_AUTH_SECRET is shorter than {MIN_SECRET_BYTES} bytes; "
            "use a long random secret in production"
        )
    _provider_together(values)
    served = values["kafka_topics"]
    for name, named in (
        ("WS_TOPIC_POLICIES", [t for t, _ in values["topic_policy_overrides"]]),
        ("WS_STATE_TOPICS", values["state_topics"]),
        ("WS_TOPIC_FORMATS", [t for t, _ in values["topic_formats"]]),
    ):
        unknown = [t for t in named if t not in served]
        if unknown:
            raise ConfigError(
                name, f"names {unknown[0]}, which is not in WS_KAFKA_TOPICS ({','.join(served)})"
            )
    framed = [t for t, f in values["topic_formats"] if f in SCHEMA_FORMATS]
    if framed and not values["schema_registry_url"]:
        raise ConfigError(
            "WS_SCHEMA_REGISTRY_URL",
            f"is required: WS_TOPIC_FORMATS makes {framed[0]} a schema format",
        )
    if not values["kafka_ssl_check_hostname"] and values["kafka_security_protocol"] in (
        "SSL", "SASL_SSL",
    ):  # fmt: skip
        warnings.append(
            "WS_KAFKA_SSL_CHECK_HOSTNAME is off: any certificate the CA signed is accepted "
            "for any broker"
        )
    _sasl_together(values)
    return warnings


def _provider_together(values: dict[str, Any]) -> None:
    """Asymmetric algorithms need an identity provider's keys, and its keys an algorithm."""
    keyed = values["auth_jwks_url"] or values["auth_public_key_files"]
    asymmetric = [a for a in values["auth_algorithms"] if a in ASYMMETRIC_ALGORITHMS]
    if asymmetric and not keyed:
        raise ConfigError(
            "WS_AUTH_ALGORITHMS",
            f"names {asymmetric[0]}, which needs WS_AUTH_JWKS_URL or WS_AUTH_PUBLIC_KEY_FILES",
        )
    if keyed and not asymmetric:
        raise ConfigError(
            "WS_AUTH_ALGORITHMS",
            "has no identity provider's algorithm (e.g. RS256) for WS_AUTH_JWKS_URL or "
            "WS_AUTH_PUBLIC_KEY_FILES",
        )
    try:
        read_pem_files(values["auth_public_key_files"])
    except ValueError as exc:
        raise ConfigError("WS_AUTH_PUBLIC_KEY_FILES", str(exc)) from None


def _sasl_together(values: dict[str, Any]) -> None:
    """What each SASL mechanism needs besides itself."""
    if not values["kafka_security_protocol"].startswith("SASL"):
        return
    if values["kafka_sasl_mechanism"] == "OAUTHBEARER":
        for name in ("token_url", "client_id", "client_secret"):
            if not values[f"kafka_sasl_oauth_{name}"]:
                raise ConfigError(
                    f"WS_KAFKA_SASL_OAUTH_{name.upper()}",
                    "OAUTHBEARER needs WS_KAFKA_SASL_OAUTH_TOKEN_URL, "
                    "WS_KAFKA_SASL_OAUTH_CLIENT_ID and WS_KAFKA_SASL_OAUTH_CLIENT_SECRET",
                )
    elif not (values["kafka_sasl_username"] and values["kafka_sasl_password"]):
        raise ConfigError(
            "WS_KAFKA_SASL_USERNAME",
            "SASL needs WS_KAFKA_SASL_USERNAME and WS_KAFKA_SASL_PASSWORD",
        )


def load_settings(
    flags: Mapping[str, object | None] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    env_file: str | Path | None = ".env",
    require_secret: bool = False,
) -> Settings:
    """Merge flags > environment > ``.env`` and validate every value.

    ``flags`` maps variable names to the value a command-line flag gave, or
    ``None`` where the flag was not given. Raises :class:`ConfigError` naming
    the first invalid variable.
    """
    sources: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        sources.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    sources.update(os.environ if environ is None else environ)
    for name, value in (flags or {}).items():
        if name not in _BY_NAME:
            raise KeyError(f"unknown setting {name}")
        if value is not None:
            sources[name] = str(value)

    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = sources.get(var.name, var.default)
        if var.parse is _secret:
            raw = _secret_file(var.name, sources, raw)
        if raw is None:
            values[var.attr] = None
            continue
        try:
            values[var.attr] = var.parse(raw)
        except ValueError as exc:
            raise ConfigError(var.name, str(exc)) from None

    warnings = _together(values, require_secret)
    if values["replica_id"] is None:
        values["replica_id"] = _default_replica_id()
    return Settings(**values, warnings=tuple(warnings))
