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
