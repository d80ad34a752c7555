from __future__ import annotations

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


@pytest.mark.parametrize("args", [["--claim", "novalue"], ["--ttl", "-1"], ["--algorithm", "none"]])
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
    resume.positioned("order_book", {"0": 10, "1": 3})
    resume.received("order_book", 0, 10)
    # After a reconnect: from the next offset of every partition, seen or only positioned.
    frame = resume.subscribe("order_book:BTC", 2)
    assert '"since":{"0":11,"1":3}' in frame and "rewind" not in frame
    assert '"since":{}' in Resume({}).subscribe("lines", 1)
