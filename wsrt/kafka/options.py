"""aiokafka client options from the settings, and partition discovery through public API.

Every wsrt Kafka client (the bridge's consumer, ``produce``, ``check --kafka``,
the demo feed) takes its brokers, TLS and SASL from :func:`client_options`.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import ssl
from typing import Any, NamedTuple

from aiokafka import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from wsrt.aio import Abandoned, abandon_after
from wsrt.config import Settings
from wsrt.kafka import oauth

#: Errors that mean "Kafka is not reachable or not answering": retry, report, never crash.
UNAVAILABLE = (KafkaError, OSError, Abandoned)
#: Of those, the ones where Kafka answers but refuses this client (an ACL is missing).
DENIED = (TopicAuthorizationFailedError, GroupAuthorizationFailedError)


def client_options(settings: Settings) -> dict[str, Any]:
    """Options shared by every wsrt Kafka client (brokers, TLS, SASL, client id)."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(settings.kafka_brokers),
        "security_protocol": settings.kafka_security_protocol,
        "client_id": f"wsrt-{settings.replica_id}",
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
        context.check_hostname = settings.kafka_ssl_check_hostname
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        if settings.kafka_sasl_mechanism == "OAUTHBEARER":
            options["sasl_oauth_token_provider"] = token_endpoint(settings)
        else:
            options["sasl_plain_username"] = settings.kafka_sasl_username
            options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def token_endpoint(settings: Settings) -> oauth.TokenEndpoint:
    """The process's OAUTHBEARER token source for these settings."""
    s = settings
    assert s.kafka_sasl_oauth_token_url and s.kafka_sasl_oauth_client_id
    assert s.kafka_sasl_oauth_client_secret
    return oauth.shared(
        s.kafka_sasl_oauth_token_url, s.kafka_sasl_oauth_client_id,
        s.kafka_sasl_oauth_client_secret, s.kafka_sasl_oauth_scope, s.kafka_request_timeout,
        s.kafka_ssl_cafile,
    )  # fmt: skip


def consumer_options(settings: Settings) -> dict[str, Any]:
    """Options of the bridge's consumer: manual commits, the mode's offset reset, fetch bounds."""
    s = settings
    return {
        **client_options(s),
        "group_id": s.group_id,
        "enable_auto_commit": False,
        # Broadcast replicas serve live data from the end of each partition.
        "auto_offset_reset": s.kafka_offset_reset if s.fanout_mode == "shared" else "latest",
        "isolation_level": s.kafka_isolation_level,
        "fetch_max_wait_ms": max(1, int(s.kafka_fetch_max_wait * 1000)),
        "metadata_max_age_ms": int(s.kafka_metadata_refresh * 1000),
        "request_timeout_ms": int(s.kafka_request_timeout * 1000),
    }


def metadata_client(settings: Settings) -> AIOKafkaClient:
    """A client for metadata requests only (not started).

    Its own view of the cluster is refreshed as often as the consumer's, so a
    broker the cluster fenced is soon no longer asked.
    """
    return AIOKafkaClient(
        **client_options(settings),
        request_timeout_ms=int(settings.kafka_request_timeout * 1000),
        metadata_max_age_ms=int(settings.kafka_metadata_refresh * 1000),
    )


class Replication(NamedTuple):
    """The found partitions' leaders and replicas, as the metadata answer says."""

    #: Partitions without a leader (``topic[partition]``): nobody serves them now.
    leaderless: list[str]
    #: Partitions with fewer replicas in sync than they have.
    under_replicated: int
    #: Brokers that hold replicas but are not in the cluster's list of live brokers.
    away: list[int]


class Discovered(NamedTuple):
    #: Topic → its partitions, for each topic that exists.
    found: dict[str, set[int]]
    #: Topics that do not exist.
    missing: list[str]
    #: Topics Kafka does not let this client describe (an ACL is missing; Kafka does
    #: not say whether they exist).
    denied: list[str]
    #: Where the found partitions stand in a cluster of several brokers.
    replication: Replication


async def discover(client: AIOKafkaClient, topics: tuple[str, ...]) -> Discovered:
    """The partitions of each of ``topics`` that exists, the missing and the denied.

    Kafka leaves topics a client may not describe out of the list of all
    topics: those not in it are asked for by name (never created), and the
    answer says which are denied rather than missing.
    """
    try:
        cluster = await client.fetch_all_metadata()
    except KafkaError:
        # A broker closes a connection whose SASL session expired (OAUTHBEARER with
        # connections.max.reauth.ms: aiokafka does not re-authenticate), and the
        # request that meets it fails. Asked once more, on new connections.
        cluster = await client.fetch_all_metadata()
    found: dict[str, set[int]] = {}
    absent: list[str] = []
    live = {b.nodeId for b in cluster.brokers()}
    leaderless: list[str] = []
    under = 0
    holders: set[int] = set()
    for topic in topics:
        partitions = cluster.partitions_for_topic(topic)
        if partitions:
            found[topic] = set(partitions)
        else:
            absent.append(topic)
        # aiokafka keeps replicas and in-sync sets only here (ClusterMetadata has no accessor).
        for p, meta in sorted(cluster._partitions.get(topic, {}).items()):
            if meta.leader == -1:
                leaderless.append(f"{topic}[{p}]")
            under += len(meta.isr) < len(meta.replicas)
            holders.update(meta.replicas)
    replication = Replication(leaderless, under, sorted(holders - live))
    denied: list[str] = []
    node = client.get_random_node()
    if absent and node is not None:
        answer = await client.send(node, MetadataRequest(absent, allow_auto_topic_creation=False))
        denied = [
            t[1] for t in answer.topics if t[0] == TopicAuthorizationFailedError.errno
        ]  # fmt: skip
    return Discovered(found, [t for t in absent if t not in denied], denied, replication)


def replication_words(r: Replication) -> tuple[str | None, str | None]:
    """What the cluster's state means for delivery: ``(outage, note)``, each ``None`` when moot.

    An outage: partitions nobody leads (their records cannot be read). A note:
    every partition is served, but brokers are away or replicas out of sync,
    which an operator should know and a load balancer should not act on.
    """
    away = ", ".join(map(str, r.away))
    if r.leaderless:
        shown = ", ".join(r.leaderless[:5]) + (" …" if len(r.leaderless) > 5 else "")
        outage = f"Kafka has no leader for {shown}"
        return outage + (f" (broker id {away} away)" if away else ""), None
    if r.away:
        return None, (
            f"serving every partition; Kafka broker id {away} away, "
            f"{r.under_replicated} partition(s) under-replicated"
        )
    if r.under_replicated:
        return None, (
            f"serving every partition; {r.under_replicated} partition(s) under-replicated "
            "(replicas catching up)"
        )
    return None, None


def denied_words(topics: list[str], settings: Settings) -> str:
    """Topics Kafka would not describe to this client, in plain words."""
    return (
        f"Kafka does not let {principal(settings)} describe topic(s) {', '.join(topics)} "
        "(a Describe ACL is missing; Kafka does not say whether they exist)"
    )


def principal(settings: Settings) -> str:
    """Who wsrt is to Kafka, as an operator would look it up in the ACLs."""
    if settings.kafka_security_protocol.startswith("SASL"):
        if settings.kafka_sasl_mechanism == "OAUTHBEARER":
            return f"the OAuth client {settings.kafka_sasl_oauth_client_id} (the token's sub)"
        return f"user {settings.kafka_sasl_username}"
    if settings.kafka_ssl_certfile:
        return f"the client certificate {settings.kafka_ssl_certfile}"
    return "this client (no SASL user or client certificate: ANONYMOUS)"


#: How long :func:`explain` tries each broker's port.
PROBE_SECONDS = 1.0


async def explain(exc: BaseException, settings: Settings) -> str:
    """Why Kafka is unavailable, in plain words for readiness, logs and ``wsrt check``.

    ``cannot reach Kafka at 127.0.0.1:9999: connection refused`` rather than
    aiokafka's ``Unable to bootstrap from [('127.0.0.1', 9999, <AddressFamily…>)]``:
    when the client could not connect, each broker is tried to say why, the
    way the settings say to talk to it (TCP, then TLS, then SASL), so that a
    wrong password, an untrusted certificate or a listener of another
    protocol each get their own words.
    """
    brokers = settings.kafka_brokers
    where = ",".join(brokers)
    if isinstance(exc, Abandoned | TimeoutError):
        # A hung broker, or a port that is not Kafka's.
        return f"Kafka at {where} is not answering" + (f" ({exc})" if str(exc) else "")
    if type(exc) is KafkaError and "Unable to get cluster metadata" in str(exc):
        # aiokafka asked every known broker for metadata and none answered in time.
        return f"Kafka at {where} is not answering (no broker answered a metadata request)"
    if isinstance(exc, OSError | KafkaConnectionError):
        causes = await asyncio.gather(*(_reason(broker, settings) for broker in brokers))
        if len(set(causes)) == 1:
            return f"cannot reach Kafka at {where}: {causes[0]}"
        return "cannot reach Kafka: " + "; ".join(
            f"{b} {c}" for b, c in zip(brokers, causes, strict=True)
        )
    detail = _detail(exc)
    if isinstance(exc, GroupAuthorizationFailedError):
        return (
            f"Kafka does not let {principal(settings)} use consumer group {detail or '?'} "
            "(a Read ACL on the group is missing)"
        )
    if isinstance(exc, TopicAuthorizationFailedError):
        return (
            f"Kafka does not let {principal(settings)} read topic(s) {detail or '?'} "
            "(a Read ACL on the topic is missing)"
        )
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", type(exc).__name__.removesuffix("Error")).lower()
    return f"Kafka at {where}: {words}" + (f" ({detail})" if detail else "")


def _detail(exc: BaseException) -> str:
    """aiokafka's text without the class it repeats: "[Error 15] GroupCoordinator…: …"."""
    detail = str(exc).removeprefix(f"[Error {getattr(exc, 'errno', '')}] ")
    return detail.removeprefix(type(exc).__name__).lstrip(": ").strip()


async def _reason(broker: str, settings: Settings) -> str:
    """What TCP, TLS and SASL say when ``broker`` is tried as the settings say."""
    host, _, port = broker.rpartition(":")
    host = host.strip("[]")
    tcp = await _tcp_reason(host, int(port))
    if tcp is not None:
        return tcp
    protocol = settings.kafka_security_protocol
    options = client_options(settings)
    if protocol in ("SSL", "SASL_SSL"):
        tls = await _tls_reason(host, int(port), options["ssl_context"], settings)
        if tls is not None:
            return tls
    elif await _tls_reason(host, int(port), _unverified(), settings) is None:
        return (
            f"the port speaks TLS, and WS_KAFKA_SECURITY_PROTOCOL is {protocol} (SSL or SASL_SSL?)"
        )
    sasl = await _sasl_reason(host, int(port), settings, options)
    if sasl is not None:
        return sasl
    # The port answers, Kafka's protocol does not: a listener of another protocol, or no broker.
    return "the port answers but not as Kafka (check WS_KAFKA_SECURITY_PROTOCOL)"


async def _tcp_reason(host: str, port: int) -> str | None:
    """What a plain TCP connect to ``host:port`` says, in words (``None``: it connects)."""
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no answer within {PROBE_SECONDS:g}s (a firewall, or the wrong address)"
    except socket.gaierror:
        return f"unknown host {host}"
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return "connection refused"
        return (exc.strerror or str(exc)).lower()
    writer.close()
    return None


async def _tls_reason(
    host: str, port: int, context: ssl.SSLContext, settings: Settings
) -> str | None:
    """What a TLS handshake with ``context`` says (``None``: it succeeds)."""
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        said = exc.verify_message or str(exc)
        if exc.verify_code == X509_HOSTNAME_MISMATCH or "mismatch" in said.lower():
            return (
                f"Kafka's certificate is not for {host} ({said}): connect by a name it is "
                "for, or set WS_KAFKA_SSL_CHECK_HOSTNAME=false"
            )
        return (
            f"Kafka's certificate is not trusted ({said}): WS_KAFKA_SSL_CAFILE must name "
            "the CA that signed it"
        )
    except ssl.SSLError as exc:
        if exc.reason in NOT_TLS:
            return "the port does not speak TLS (WS_KAFKA_SECURITY_PROTOCOL: PLAINTEXT?)"
        if exc.reason in CERTIFICATE_REFUSED:
            return _certificate_refused(exc.reason, settings)
        return f"the TLS handshake failed ({exc.reason or exc})"
    except TimeoutError:
        return (
            f"no answer to the TLS handshake within {PROBE_SECONDS:g}s: the port may not speak "
            "TLS (WS_KAFKA_SECURITY_PROTOCOL: PLAINTEXT?)"
        )
    except ConnectionResetError:
        return (
            "the port closed the connection at the TLS handshake: it may not speak TLS "
            "(WS_KAFKA_SECURITY_PROTOCOL: PLAINTEXT?)"
        )
    except OSError as exc:
        return f"the TLS handshake failed ({exc.strerror or exc or type(exc).__name__})"
    writer.close()
    return None


async def _sasl_reason(
    host: str, port: int, settings: Settings, options: dict[str, Any]
) -> str | None:
    """What Kafka says to a connection as the settings make it (``None``: it logs in)."""
    oauth_provider = options.get("sasl_oauth_token_provider")
    if oauth_provider is not None:
        try:
            await oauth_provider.token()
        except oauth.TokenEndpointError as exc:
            return str(exc)
    try:
        conn = await abandon_after(
            create_conn(
                host, port, client_id=options["client_id"],
                request_timeout_ms=int(PROBE_SECONDS * 1000),
                ssl_context=options.get("ssl_context"),
                security_protocol=settings.kafka_security_protocol,
                sasl_mechanism=options.get("sasl_mechanism"),
                sasl_plain_username=options.get("sasl_plain_username"),
                sasl_plain_password=options.get("sasl_plain_password"),
                sasl_oauth_token_provider=oauth_provider,
            ),
            PROBE_SECONDS * 2, "kafka login",
        )  # fmt: skip
    except SaslAuthenticationFailed:
        if oauth_provider is not None:
            return (
                f"Kafka refused the OAUTHBEARER token of client "
                f"{settings.kafka_sasl_oauth_client_id} from {settings.kafka_sasl_oauth_token_url} "
                "(its issuer, audience or signing key is not the one the broker expects?)"
            )
        return (
            f"Kafka refused the SASL login for user {settings.kafka_sasl_username} "
            f"({settings.kafka_sasl_mechanism})"
        )
    except UnsupportedSaslMechanismError as exc:
        _, said, offered = str(exc).partition("Enabled mechanisms are: ")
        return (
            f"Kafka does not offer SASL {settings.kafka_sasl_mechanism} there "
            f"(WS_KAFKA_SASL_MECHANISM" + (f"; it offers {offered})" if said else ")")
        )
    except Exception as exc:  # TLS 1.3 refuses a client certificate after the handshake
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLError) and cause.reason in CERTIFICATE_REFUSED:
            return _certificate_refused(cause.reason, settings)
        return None  # any other failure: the generic words
    conn.close()
    return None


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


#: What OpenSSL says when the other side does not speak TLS at all.
NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG")
#: What it says when the server refused (or required) the client's certificate.
CERTIFICATE_REFUSED = (
    "TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
)  # fmt: skip


def _certificate_refused(reason: str, settings: Settings) -> str:
    if not settings.kafka_ssl_certfile:
        return (
            "Kafka wants a client certificate (mutual TLS): set WS_KAFKA_SSL_CERTFILE and "
            "WS_KAFKA_SSL_KEYFILE"
        )
    return (
        f"Kafka refused the client certificate {settings.kafka_ssl_certfile} "
        f"({reason.lower().replace('_', ' ')}): is it signed by a CA the broker trusts?"
    )


#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH (also said for an IP address that does not match).
X509_HOSTNAME_MISMATCH = 62
