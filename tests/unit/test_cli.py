from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import jwt
import pytest
from typer.testing import CliRunner

from wsrt.cli import app

runner = CliRunner()
COMMANDS = ["serve", "token", "tail", "check", "produce", "loadtest", "dev"]


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


def test_token_prints_only_a_verifiable_jwt() -> None:
    result = runner.invoke(
        app,
        ["token", "dev-secret", "alice", "--ttl", "60", "--aud", "wsrt", "--channels", "lines,order_book:*",
         "--claim", "tier=2", "--claim", "team=ops"],
    )  # fmt: skip
    assert result.exit_code == 0
    token = result.stdout.strip()
    assert "\n" not in token
    claims = jwt.decode(token, "dev-secret", algorithms=["HS256"], audience="wsrt")
    assert claims["sub"] == "alice"
    assert claims["channels"] == ["lines", "order_book:*"]
    assert claims["tier"] == 2 and claims["team"] == "ops"
    assert 55 <= claims["exp"] - time.time() <= 61


def test_token_ttl_zero_never_expires() -> None:
    result = runner.invoke(app, ["token", "s", "bob", "--ttl", "0"])
    assert "exp" not in jwt.decode(result.stdout.strip(), "s", algorithms=["HS256"])


def test_token_filter_becomes_the_filters_claim_the_server_reads() -> None:
    from wsrt.auth import claims_from_payload

    mine = {"field": "headers.account", "eq": "acct-42"}
    result = runner.invoke(
        app, ["token", "s", "u", "--filter", f"orders={json.dumps(mine)}", "--filter", 'o*={"field":"key","eq":"k"}'],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    payload = jwt.decode(result.stdout.strip(), "s", algorithms=["HS256"])
    assert payload["filters"] == {"orders": mine, "o*": {"field": "key", "eq": "k"}}
    imposed = claims_from_payload(payload).filter_for("orders")
    assert imposed is not None and imposed.canonical == (
        b'{"all":[{"eq":"k","field":"key"},{"eq":"acct-42","field":"headers.account"}]}'
    )


def test_token_signs_with_a_private_key_as_a_provider_would(tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    keys = {
        "rsa.pem": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec.pem": ec.generate_private_key(ec.SECP256R1()),
    }
    for name, key in keys.items():
        (tmp_path / name).write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))  # fmt: skip
    for name, algorithm in (("rsa.pem", "RS256"), ("ec.pem", "ES256")):
        result = runner.invoke(
            app, ["token", "u", "--private-key", str(tmp_path / name), "--kid", "k1",
                  "--issuer", "https://idp", "--ttl", "60"],
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        token = result.stdout.strip()
        assert jwt.get_unverified_header(token) == {"alg": algorithm, "kid": "k1", "typ": "JWT"}
        claims = jwt.decode(
            token, keys[name].public_key(), algorithms=[algorithm], issuer="https://idp"
        )
        assert claims["sub"] == "u" and 55 <= claims["exp"] - time.time() <= 61
    wrong = runner.invoke(
        app, ["token", "u", "--private-key", str(tmp_path / "ec.pem"), "--algorithm", "RS256"]
    )
    assert wrong.exit_code == 2 and "does not go with this key" in wrong.stderr
    (tmp_path / "junk.pem").write_text("junk")
    junk = runner.invoke(app, ["token", "u", "--private-key", str(tmp_path / "junk.pem")])
    assert junk.exit_code == 2 and "is not a PEM private key" in junk.stderr


@pytest.mark.parametrize(
    "args",
    [["--kid", "k"], ["--claim", "novalue"], ["--ttl", "-1"], ["--algorithm", "none"], ["--filter", "orders"],
     ["--filter", "orders={"], ["--filter", 'orders={"field":"x","eq":1}']],
)  # fmt: skip
def test_token_usage_errors_exit_2(args: list[str]) -> None:
    result = runner.invoke(app, ["token", "s", "bob", *args])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")


def run_serve(env: dict[str, str], tmp_path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsrt", "serve"],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "WS_AUTH_SECRET"),
        ({"WS_AUTH_SECRET": "x" * 32, "WS_BIND_ADDRESS": "not-an-address"}, "WS_BIND_ADDRESS"),
        ({"WS_AUTH_SECRET": "x" * 32, "WS_CLIENT_BUFFER": "lots"}, "WS_CLIENT_BUFFER"),
        ({"WS_AUTH_SECRET": "x" * 32, "WS_KAFKA_TOPICS": ""}, "WS_KAFKA_TOPICS"),
        ({"WS_AUTH_SECRET": "x" * 32, "WS_TOPIC_POLICIES": "trades=drop"}, "WS_TOPIC_POLICIES"),
        ({"WS_AUTH_SECRET": "x" * 32, "WS_TOPIC_POLICIES": "lines=fast"}, "WS_TOPIC_POLICIES"),
        ({"WS_AUTH_SECRET": "x" * 32, "WS_TOPIC_FORMATS": "lines=proto"}, "WS_TOPIC_FORMATS"),
        ({"WS_AUTH_SECRET": "x" * 32, "WS_AUTH_ALGORITHMS": "RS256"}, "WS_AUTH_ALGORITHMS"),
        ({"WS_AUTH_SECRET": "x" * 32, "WS_AUTH_ALGORITHMS": "none"}, "WS_AUTH_ALGORITHMS"),
        ({"WS_AUTH_SECRET": "x" * 32, "WS_AUTH_JWKS_URL": "http://idp/jwks"}, "WS_AUTH_ALGORITHMS"),
        ({"WS_AUTH_SECRET": "x" * 32, "WS_AUTH_JWKS_URL": "ftp://idp/jwks"}, "WS_AUTH_JWKS_URL"),
        (
            {
                "WS_AUTH_SECRET": "x" * 32,
                "WS_AUTH_ALGORITHMS": "ES256",
                "WS_AUTH_PUBLIC_KEY_FILES": "/nowhere/idp.pem",
            },
            "WS_AUTH_PUBLIC_KEY_FILES",
        ),
        ({"WS_AUTH_SECRET": "x" * 32, "WS_TOPIC_FORMATS": "lines=avro"}, "WS_SCHEMA_REGISTRY_URL"),
        ({"WS_AUTH_SECRET": "x" * 32, "WS_TOPIC_FORMATS": "trades=bytes"}, "WS_TOPIC_FORMATS"),
        (
            {"WS_AUTH_SECRET": "x" * 32, "WS_SLOW_CONSUMER_POLICY": "never"},
            "WS_SLOW_CONSUMER_POLICY",
        ),
    ],
)
def test_serve_with_invalid_config_exits_2_with_one_line(env, variable, tmp_path) -> None:
    result = run_serve(env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {variable}: ")
    assert "Traceback" not in result.stderr


def test_serve_reads_dotenv_in_the_working_directory(tmp_path) -> None:
    (tmp_path / ".env").write_text(
        "WS_AUTH_SECRET=from-dotenv-secret-0123456789abcdef\nWS_BIND_ADDRESS=bad\n"
    )
    result = run_serve({}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: WS_BIND_ADDRESS: expected host:port or :port, got 'bad'"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--since", "5m", "--rewind", "3"], "give one of --since"),
        (["--since", "yesterday"], "duration"),
        (["--from-offsets", "0:12"], "partition=offset"),
        (["--rewind", "-1"], "0 or more"),
    ],
)
def test_tail_start_options_are_checked_before_connecting(args: list[str], says: str) -> None:
    result = runner.invoke(app, ["tail", "-c", "lines", "--url", "ws://127.0.0.1:9/ws", *args])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and says in result.stderr
    assert result.stderr.count("\n") == 1


def test_tail_start_fields() -> None:
    from wsrt.cli.tail import Resume, parse_offsets, parse_since

    assert parse_since("5m", 1_000.0) == 700_000
    assert parse_since("1.5h", 10_000.0) == 4_600_000
    assert parse_since("2026-12-01T10:00:00Z", 0) == 1_796_119_200_000
    assert parse_since("2026-12-01T10:00:00", 0) == 1_796_119_200_000  # no zone: UTC
    assert parse_since("2026-12-01T11:00:00+01:00", 0) == 1_796_119_200_000
    assert parse_offsets("0=1234, 1=88") == {"0": 1234, "1": 88}
    resume = Resume({"rewind": 5})
    assert '"rewind":5' in resume.subscribe("order_book:BTC", 1)
    resume.positioned("order_book:BTC", {"0": 10, "1": 3})
    resume.received({"channel": "order_book", "key": "BTC", "partition": 0, "offset": 10})
    # After a reconnect: from the next offset of every partition, seen or only positioned.
    frame = resume.subscribe("order_book:BTC", 2)
    assert '"since":{"0":11,"1":3}' in frame and "rewind" not in frame
    assert '"since":{}' in Resume({}).subscribe("lines", 1)


def test_tail_resumes_each_channel_of_one_topic_from_its_own_offsets() -> None:
    """``-c lines:A -c lines:B``: B's last offset shown is not A's."""
    from wsrt.cli.tail import Resume

    resume = Resume({})
    resume.positioned("lines:A", {"0": 0})
    resume.positioned("lines:B", {"0": 0})
    resume.received({"channel": "lines", "key": "B", "partition": 0, "offset": 7})
    resume.received({"channel": "lines", "key": "A", "partition": 0, "offset": 3})
    assert '"since":{"0":4}' in resume.subscribe("lines:A", 3)
    assert '"since":{"0":8}' in resume.subscribe("lines:B", 4)
    # The server's positions win, also below what was shown (a recreated topic).
    resume.positioned("lines:B", {"0": 2})
    assert '"since":{"0":2}' in resume.subscribe("lines:B", 5)


# -- help pages, --version, secrets (issue 16) ----------------------------------

TYPE_LABELS = re.compile(r"<(str|bool|int|float|path|list\[)|\{[a-z_]+\}")


@pytest.mark.parametrize("command", [[], *([c] for c in [*COMMANDS, "bench"])])
def test_help_pages_read_like_a_mature_cli(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    # No Python type labels (<bool>, <list[str]>, {secret}): flags have no
    # metavar, values a word that says what they are.
    assert not TYPE_LABELS.search(result.output), TYPE_LABELS.search(result.output)
    # Environment variables are shown by Typer from the binding, never typed by hand.
    assert not re.search(r"\[WS_[A-Z_]+\]", result.output)


def test_settings_flags_show_and_read_their_environment_variable(tmp_path) -> None:
    help_text = runner.invoke(app, ["tail", "--help"], env={"COLUMNS": "200"}).output
    for variable in ("WS_URL", "WS_TOKEN", "WS_AUTH_SECRET"):
        assert f"env var: {variable}" in help_text
    # The binding reads the variable: a bad WS_URL is named like a bad flag.
    result = runner.invoke(
        app,
        ["tail", "-c", "lines", "--env-file", str(tmp_path / "none")],
        env={"WS_URL": "http://x"},
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: WS_URL: must be a ws:// or wss:// URL")


def test_version_names_wsrt_python_and_the_libraries() -> None:
    import platform
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    line = result.stdout.strip()
    assert line.startswith(f"wsrt {version('wsrt')} (")
    assert f"Python {platform.python_version()}" in line
    assert f"websockets {version('websockets')}" in line
    assert f"aiokafka {version('aiokafka')}" in line


def _subject(token: str, secret: str) -> str:
    sub: str = jwt.decode(token.strip(), secret, algorithms=["HS256"])["sub"]
    return sub


def test_token_takes_the_secret_from_a_file_stdin_or_the_environment(tmp_path) -> None:
    empty = str(tmp_path / "no.env")
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")  # the newline an editor adds is not the secret's
    by_file = runner.invoke(
        app, ["token", "--secret-file", str(secret_file), "ann", "--env-file", empty]
    )
    assert _subject(by_file.stdout, "from-a-file") == "ann"
    by_stdin = runner.invoke(app, ["token", "--secret-file", "-", "bo"], input="from-stdin")
    assert _subject(by_stdin.stdout, "from-stdin") == "bo"
    by_env = runner.invoke(
        app, ["token", "cy", "--env-file", empty], env={"WS_AUTH_SECRET": "env-s"}
    )
    assert _subject(by_env.stdout, "env-s") == "cy"
    (tmp_path / ".env").write_text("WS_AUTH_SECRET=dotenv-s\n")
    by_dotenv = runner.invoke(
        app, ["token", "di", "--env-file", str(tmp_path / ".env")], env={"WS_AUTH_SECRET": None}
    )
    assert _subject(by_dotenv.stdout, "dotenv-s") == "di"
    # The runbook's form still works, and wins.
    runbook = runner.invoke(app, ["token", "dev-secret", "ed"], env={"WS_AUTH_SECRET": "env-s"})
    assert _subject(runbook.stdout, "dev-secret") == "ed"


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["nobody"], {"WS_AUTH_SECRET": None}, "no secret: set WS_AUTH_SECRET"),
        (["a", "b", "c"], {}, "at most two arguments"),
        (["s", "bob", "--secret-file", "-"], {}, "not both"),
        (["bob", "--secret-file", "/nonexistent/secret"], {}, "cannot read /nonexistent/secret"),
    ],
)
def test_token_secret_mistakes_exit_2_with_one_line(args, env, says, tmp_path) -> None:
    result = runner.invoke(
        app, ["token", *args, "--env-file", str(tmp_path / "none")], env=env, input=""
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and says in result.stderr
    assert result.stderr.count("\n") == 1


def test_client_commands_read_the_secret_file(tmp_path) -> None:
    from wsrt.cli.common import client_token, settings_or_exit

    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 32 + "\n")
    from wsrt.cli.common import read_secret

    secret = read_secret(None, str(secret_file))
    settings = settings_or_exit({"WS_AUTH_SECRET": secret}, None, require_secret=True, warn=False)
    assert _subject(client_token(settings, "carol"), "s" * 32) == "carol"
    # Every client command offers it.
    for command in ("tail", "check", "loadtest"):
        assert "--secret-file" in runner.invoke(app, [command, "--help"]).output


def test_check_colours_ok_and_fail_only_for_a_terminal() -> None:
    from wsrt.cli.check import Result

    plain = Result("healthz", False, "503").line()
    assert plain.startswith("FAIL  healthz") and "\x1b[" not in plain
    coloured = Result("healthz", False, "503").line(color=True)
    assert "\x1b[31m" in coloured and "FAIL" in coloured
    assert "\x1b[32m" in Result("livez", True, "200").line(color=True)


def test_tail_shows_as_much_data_as_the_terminal_is_wide() -> None:
    import io

    from rich.console import Console

    from wsrt.cli.tail import LiveView

    data = {"pad": "x" * 300}
    for width in (100, 160):
        console = Console(file=io.StringIO(), width=width, force_terminal=False)
        view = LiveView("ws://127.0.0.1:1/ws", ["lines"], console=console)
        view.message(
            {"channel": "lines", "key": "k", "partition": 0, "offset": 7, "data": data}, b""
        )
        console.print(view)
        row = next(line for line in console.file.getvalue().splitlines() if "0:7" in line)
        shown = row.split("0:7", 1)[1].strip()
        assert len(row) <= width and shown.startswith('{"pad":"xxx') and shown.endswith("…")
        # The data column takes what the other columns leave: well past 80 on a wide one.
        assert len(shown) > width - 40, (width, row)


def test_dev_leaves_an_env_file_only_where_none_of_the_users_is(tmp_path) -> None:
    from wsrt.cli.dev import DevEnv

    path = tmp_path / ".env"
    dev = DevEnv(path)
    assert dev.write({"WS_URL": "ws://127.0.0.1:8080/ws"})
    assert path.read_text().splitlines()[1:] == ["WS_URL=ws://127.0.0.1:8080/ws"]
    assert path.stat().st_mode & 0o777 == 0o600
    # A crashed run's file is rewritten by the next; removed at exit while unchanged.
    again = DevEnv(path)
    assert again.write({"WS_URL": "ws://127.0.0.1:9090/ws"})
    again.remove()
    assert not path.exists()
    # The user's own file is never touched, and not removed.
    path.write_text("WS_URL=ws://prod.example.com/ws\n")
    assert not DevEnv(path).write({"WS_URL": "ws://127.0.0.1:8080/ws"})
    DevEnv(path).remove()
    assert path.read_text() == "WS_URL=ws://prod.example.com/ws\n"
    # Edited by hand meanwhile: kept.
    path.unlink()
    edited = DevEnv(path)
    edited.write({"WS_URL": "ws://127.0.0.1:8080/ws"})
    path.write_text(path.read_text() + "WS_LOG_LEVEL=DEBUG\n")
    edited.remove()
    assert path.exists()


def test_tail_snapshot_resumes_with_since_and_keeps_one_row_per_key() -> None:
    from rich.console import Console

    from wsrt.cli.tail import LiveView, Resume

    resume = Resume({"snapshot": True})
    assert '"snapshot":true' in resume.subscribe("book", 1) and "since" not in resume.subscribe(
        "book", 1
    )
    resume.positioned("book", {"0": 10})
    resume.received(
        {"channel": "book", "key": "BTC", "partition": 0, "offset": 3, "snapshot": True}
    )
    resume.received(
        {"type": "delete", "channel": "book", "key": "ETH", "partition": 0, "offset": 11}
    )
    frame = resume.subscribe("book", 2)  # a snapshot value does not move where it resumes
    assert '"since":{"0":12}' in frame and '"snapshot":true' in frame

    console = Console(record=True, width=120, file=open("/dev/null", "w"))  # noqa: SIM115
    view = LiveView("ws://x/ws", ["book"], console, state=True)
    view.status("subscribed book from 0=10")
    for key, n in (("BTC", 1), ("ETH", 2)):
        view.message({"channel": "book", "key": key, "partition": 0, "offset": n,
                      "snapshot": True, "data": {"n": n}}, b"")  # fmt: skip
    view.message({"type": "delete", "channel": "book", "key": "ETH", "partition": 0,
                  "offset": 12}, b"")  # fmt: skip
    view.message({"channel": "book", "key": "BTC", "partition": 0, "offset": 13,
                  "data": {"n": 13}}, b"")  # fmt: skip
    console.print(view)
    shown = console.export_text()
    assert "state (one row per key)" in shown and "0:13" in shown and '{"n":13}' in shown
    assert "ETH" not in shown.split("state (one row per key)")[1]
    # A new snapshot after a resubscribe replaces the rows.
    view.status("subscribed book from 0=20")
    view.message({"channel": "book", "key": "SOL", "partition": 0, "offset": 5,
                  "snapshot": True, "data": {"n": 5}}, b"")  # fmt: skip
    assert [k for _, k in view.rows or {}] == ["SOL"]
