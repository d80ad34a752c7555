"""Apache Kafka with a SASL_SSL listener, for the security tests (docs/design.md, "Kafka security").

The broker keeps its PLAINTEXT listener (the tests' producer and admin use
it) and adds a SASL_SSL one with SCRAM-SHA-512 (the user created with
Kafka's own storage tool at format time) and PLAIN (users in the JAAS
configuration), and an SSL one that requires a client certificate (mutual
TLS). Its certificate is signed by a CA this run makes, for 127.0.0.1 only,
so that a client connecting to ``localhost`` meets a hostname mismatch; the
same CA signs a client certificate, and another CA one that Kafka refuses.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.oidc import AUDIENCE, CLIENT_ID, Issuer
from wsrt.brokers import free_port
from wsrt.brokers.apache import ApacheKafka

SCRAM_USER, SCRAM_PASSWORD = "wsrt", "scram-secret-0123"
#: A SCRAM user that may do only what the ACLs a test creates allow.
LIMITED_USER, LIMITED_PASSWORD = "limited", "limited-secret-0123"
PLAIN_USER, PLAIN_PASSWORD = "wsrt-plain", "plain-secret-0123"


@dataclass(frozen=True)
class Certificates:
    ca: Path
    #: The broker's key and certificate chain in one PEM file (Kafka's PEM keystore).
    broker: Path
    #: A CA that signed nothing here: trusting it is trusting the wrong one.
    other_ca: Path
    #: A client certificate the CA signed, and its key (mutual TLS).
    client: Path
    client_key: Path
    #: A client certificate the other CA signed: Kafka refuses it.
    stranger: Path
    stranger_key: Path


def make_certificates(directory: Path) -> Certificates:
    """A CA, a broker certificate it signs for 127.0.0.1, and an unrelated CA."""
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def certificate(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
        signer: ec.EllipticCurvePrivateKey, ca: bool,
    ) -> x509.Certificate:  # fmt: skip
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def private(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )  # fmt: skip

    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(5)]
    ca_key, other_key, broker_key, client_key, stranger_key = keys
    ca = certificate("wsrt test CA", ca_key, "wsrt test CA", ca_key, ca=True)
    other = certificate("some other CA", other_key, "some other CA", other_key, ca=True)
    broker = certificate("kafka", broker_key, "wsrt test CA", ca_key, ca=False)
    client = certificate("wsrt", client_key, "wsrt test CA", ca_key, ca=False)
    stranger = certificate("wsrt", stranger_key, "some other CA", other_key, ca=False)
    out = Certificates(
        *(directory / f"{n}.pem" for n in ("ca", "broker", "other-ca", "client", "client-key")),
        *(directory / f"{n}.pem" for n in ("stranger", "stranger-key")),
    )
    out.ca.write_bytes(pem(ca))
    out.other_ca.write_bytes(pem(other))
    out.broker.write_bytes(private(broker_key) + pem(broker) + pem(ca))
    out.client.write_bytes(pem(client))
    out.client_key.write_bytes(private(client_key))
    out.stranger.write_bytes(pem(stranger))
    out.stranger_key.write_bytes(private(stranger_key))
    return out


class SecureKafka(ApacheKafka):
    """Apache Kafka with a SASL_SSL listener beside its PLAINTEXT one."""

    def __init__(self, workdir: Path, issuer: Issuer) -> None:
        super().__init__(workdir=workdir)
        self.secure_port = free_port()
        self.mtls_port = free_port()
        self.certificates = make_certificates(self.workdir)
        self.issuer = issuer
        # Kafka fetches signing keys only from URLs it is told to allow.
        self.jvm_options.append(
            f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={issuer.jwks_url}"
        )

    @property
    def secure_bootstrap(self) -> str:
        return f"127.0.0.1:{self.secure_port}"

    @property
    def mtls_bootstrap(self) -> str:
        return f"127.0.0.1:{self.mtls_port}"

    def properties(self, data: Path) -> list[str]:
        plain, controller = f"PLAINTEXT://127.0.0.1:{self.port}", "CONTROLLER://"
        secure = f"SASL_SSL://127.0.0.1:{self.secure_port},SSL://127.0.0.1:{self.mtls_port}"
        lines = []
        for line in super().properties(data):
            if line.startswith("listeners="):
                line = line.replace(f"{plain},{controller}", f"{plain},{secure},{controller}")
            elif line.startswith("advertised.listeners="):
                line += f",{secure}"
            elif line.startswith("listener.security.protocol.map="):
                line += ",SASL_SSL:SASL_SSL,SSL:SSL"
            lines.append(line)
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        plain_login = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{PLAIN_USER}="{PLAIN_PASSWORD}";'
        )
        oauth_login = (
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"
        )
        validator = (
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler"
        )
        return [
            *lines,
            "sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN,OAUTHBEARER",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
            f"listener.name.sasl_ssl.plain.sasl.jaas.config={plain_login}",
            # OAUTHBEARER: JWTs the issuer signed (keys from its JWKS), for audience "kafka".
            f"listener.name.sasl_ssl.oauthbearer.sasl.jaas.config={oauth_login}",
            f"listener.name.sasl_ssl.oauthbearer.sasl.server.callback.handler.class={validator}",
            f"sasl.oauthbearer.jwks.endpoint.url={self.issuer.jwks_url}",
            f"sasl.oauthbearer.expected.issuer={self.issuer.url}",
            f"sasl.oauthbearer.expected.audience={AUDIENCE}",
            # A connection lives at most as long as its token: the client must bring a new one.
            "listener.name.sasl_ssl.oauthbearer.connections.max.reauth.ms=10000",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.certificates.broker}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.certificates.ca}",
            "listener.name.ssl.ssl.client.auth=required",
            # ACLs apply (StandardAuthorizer); all but the limited user may do anything.
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            f"super.users=User:ANONYMOUS;User:{SCRAM_USER};User:{PLAIN_USER};User:CN=wsrt;"
            f"User:{CLIENT_ID}",
        ]

    def format_options(self) -> list[str]:
        # The SCRAM user lives in the cluster metadata: created with it.
        return [
            "--add-scram", f"SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]",
            "--add-scram", f"SCRAM-SHA-512=[name={LIMITED_USER},password={LIMITED_PASSWORD}]",
        ]  # fmt: skip
