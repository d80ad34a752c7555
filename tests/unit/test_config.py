from __future__ import annotations

import pytest

from wsrt.config import VARIABLES, load_settings
from wsrt.errors import ConfigError

SECRET = "s" * 32


def load(env: dict[str, str], flags: dict[str, str | None] | None = None, **kwargs):
    return load_settings(flags, environ=env, env_file=None, **kwargs)


def test_defaults_match_the_design() -> None:
    s = load({})
    assert s.bind_address == ("", 8080) and s.bind_host is None
    assert s.kafka_brokers == ("localhost:9092",)
    assert s.kafka_group_id == "ws-realtime"
    assert s.kafka_topics == ("lines", "order_book", "analytics")
    assert s.auth_secret is None
    assert s.allowed_origins == ()
    assert s.client_buffer == 256
    assert s.shutdown_timeout == 10.0
    assert s.fanout_mode == "broadcast"
    assert s.auth_leeway == 0.0
    assert s.log_format == "text"


def test_flags_win_over_environment_which_wins_over_env_file(tmp_path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("WS_CLIENT_BUFFER=10\nWS_KAFKA_GROUP_ID=from-file\nWS_FANOUT_MODE=shared\n")
    s = load_settings(
        {"WS_CLIENT_BUFFER": "30", "WS_FANOUT_MODE": None},
        environ={"WS_CLIENT_BUFFER": "20", "WS_KAFKA_GROUP_ID": "from-env"},
        env_file=env_file,
    )
    assert s.client_buffer == 30
    assert s.kafka_group_id == "from-env"
    assert s.fanout_mode == "shared"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WS_BIND_ADDRESS", "nonsense"),
        ("WS_BIND_ADDRESS", ":99999"),
        ("WS_BIND_ADDRESS", "host name:80"),
        ("WS_KAFKA_BROKERS", ""),
        ("WS_KAFKA_BROKERS", "kafka"),
        ("WS_KAFKA_TOPICS", " , "),
        ("WS_KAFKA_TOPICS", "a,a"),
        ("WS_KAFKA_TOPICS", "bad:topic"),
        ("WS_CLIENT_BUFFER", "many"),
        ("WS_CLIENT_BUFFER", "0"),
        ("WS_CLIENT_BUFFER", "-5"),
        ("WS_SHUTDOWN_TIMEOUT_SECONDS", "0"),
        ("WS_SHUTDOWN_TIMEOUT_SECONDS", "nan"),
        ("WS_AUTH_LEEWAY_SECONDS", "-1"),
        ("WS_FANOUT_MODE", "multicast"),
        ("WS_ALLOWED_ORIGINS", "app.example.com"),
        ("WS_AUTH_ALGORITHMS", "RS256"),
        ("WS_LOG_FORMAT", "xml"),
        ("WS_CONSOLE", "maybe"),
        ("WS_WORKERS", "0"),
        ("WS_WORKERS", "all"),
        ("WS_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
    ],
)
def test_invalid_values_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({variable: value})
    expected = "WS_KAFKA_SASL_USERNAME" if variable == "WS_KAFKA_SECURITY_PROTOCOL" else variable
    assert err.value.variable == expected
    assert str(err.value).startswith(f"{expected}: ")
    assert "\n" not in str(err.value)


def test_secret_is_required_only_when_asked() -> None:
    assert load({}).auth_secret is None
    with pytest.raises(ConfigError) as err:
        load({}, require_secret=True)
    assert err.value.variable == "WS_AUTH_SECRET"


def test_every_secret_may_come_from_a_file(tmp_path) -> None:
    secrets = {
        "WS_AUTH_SECRET": ("auth_secret", SECRET),
        "WS_KAFKA_SASL_PASSWORD": ("kafka_sasl_password", "p@ss word"),
        "WS_TOKEN": ("token", "eyJ.x.y"),
    }
    env = {}
    for name, (_, value) in secrets.items():
        path = tmp_path / name.lower()
        path.write_text(value + "\n")  # as `kubectl create secret --from-file` often has it
        env[f"{name}_FILE"] = str(path)
    settings = load(env)
    for attr, value in secrets.values():
        assert getattr(settings, attr) == value


def test_a_secret_file_that_cannot_be_read_or_doubles_a_value_names_itself(tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        load({"WS_AUTH_SECRET_FILE": str(tmp_path / "absent")})
    assert err.value.variable == "WS_AUTH_SECRET_FILE" and "No such file" in str(err.value)
    (tmp_path / "secret").write_text(SECRET)
    with pytest.raises(ConfigError) as err:
        load({"WS_AUTH_SECRET_FILE": str(tmp_path / "secret"), "WS_AUTH_SECRET": SECRET})
    assert err.value.variable == "WS_AUTH_SECRET_FILE" and "not both" in str(err.value)


def test_kafka_tls_without_a_host_name_check_is_accepted_with_a_warning() -> None:
    tls = {"WS_KAFKA_SECURITY_PROTOCOL": "SSL"}
    assert load(tls).kafka_ssl_check_hostname and load(tls).warnings == ()
    unchecked = load({**tls, "WS_KAFKA_SSL_CHECK_HOSTNAME": "false"})
    assert not unchecked.kafka_ssl_check_hostname
    assert [w for w in unchecked.warnings if "WS_KAFKA_SSL_CHECK_HOSTNAME is off" in w]


def test_short_secret_is_accepted_with_a_warning() -> None:
    s = load({"WS_AUTH_SECRET": "dev-secret"}, require_secret=True)
    assert s.auth_secret == "dev-secret"
    assert any("WS_AUTH_SECRET" in w for w in s.warnings)
    assert load({"WS_AUTH_SECRET": SECRET}).warnings == ()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(":8080", ("", 8080)), ("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:9000", ("::1", 9000)),
     ("ws.internal:80", ("ws.internal", 80))],
)  # fmt: skip
def test_bind_address_forms(raw: str, expected: tuple[str, int]) -> None:
    assert load({"WS_BIND_ADDRESS": raw}).bind_address == expected


def test_lists_fractions_and_case() -> None:
    s = load(
        {
            "WS_KAFKA_TOPICS": " a , b.c ,d-e ",
            "WS_KAFKA_BROKERS": "k1:9092,k2:9093",
            "WS_SHUTDOWN_TIMEOUT_SECONDS": "2.5",
            "WS_ALLOWED_ORIGINS": "https://App.example.com, https://*.example.org:8443",
            "WS_LOG_LEVEL": "debug",
        }
    )
    assert s.kafka_topics == ("a", "b.c", "d-e")
    assert s.kafka_brokers == ("k1:9092", "k2:9093")
    assert s.shutdown_timeout == 2.5
    assert s.allowed_origins == ("https://app.example.com", "https://*.example.org:8443")
    assert s.log_level == "DEBUG"


def test_group_id_per_fanout_mode() -> None:
    assert load({"WS_REPLICA_ID": "pod-1"}).group_id == "ws-realtime-pod-1"
    assert load({"WS_FANOUT_MODE": "shared", "WS_REPLICA_ID": "pod-1"}).group_id == "ws-realtime"
    a, b = load({}), load({})
    assert a.replica_id != b.replica_id  # two processes on one host never share a group


def test_every_variable_is_documented_and_has_the_prefix() -> None:
    names = [v.name for v in VARIABLES]
    assert len(names) == len(set(names))
    for v in VARIABLES:
        assert v.name.startswith("WS_") and v.help.endswith(".")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), (" Yes ", True), ("on", True), ("false", False), ("0", False),
     ("no", False), ("OFF", False), ("", False)],
)  # fmt: skip
def test_switches_read_the_usual_words(raw: str, expected: bool) -> None:
    assert load({"WS_CONSOLE": raw}).console is expected


def test_workers_auto_is_one_per_cpu() -> None:
    import os

    assert load({}).workers == 1
    assert load({"WS_WORKERS": "auto"}).workers == os.cpu_count()
    assert load({"WS_WORKERS": " 3 "}).workers == 3


def test_oauthbearer_names_what_it_lacks_and_reads_its_secret_from_a_file(tmp_path) -> None:
    oauth = {
        "WS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "WS_KAFKA_SASL_MECHANISM": "oauthbearer",
        "WS_KAFKA_SASL_OAUTH_TOKEN_URL": "https://idp.example.com/token",
        "WS_KAFKA_SASL_OAUTH_CLIENT_ID": "wsrt",
    }
    with pytest.raises(ConfigError) as missing:
        load(oauth)
    assert missing.value.variable == "WS_KAFKA_SASL_OAUTH_CLIENT_SECRET"
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret\n")
    settings = load({**oauth, "WS_KAFKA_SASL_OAUTH_CLIENT_SECRET_FILE": str(secret)})
    assert settings.kafka_sasl_mechanism == "OAUTHBEARER"
    assert settings.kafka_sasl_oauth_client_secret == "s3cret"
    assert settings.kafka_sasl_username is None  # no user or password needed
    with pytest.raises(ConfigError) as bad:
        load({**oauth, "WS_KAFKA_SASL_OAUTH_TOKEN_URL": "idp.example.com/token"})
    assert bad.value.variable == "WS_KAFKA_SASL_OAUTH_TOKEN_URL"
