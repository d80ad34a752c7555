"""What ``scripts/dev.sh`` prints runs as printed: each command, in order, in a fresh shell.

The newcomer's path from the README: run ``bash scripts/dev.sh`` in a folder,
open another terminal in that folder (no virtual environment active, no WS_*
variable set), and type what it printed. Each command must succeed; the one
that runs until Ctrl-C must show messages first. Then the broker dies under
``wsrt dev``, which must say so and exit non-zero, taking its ``.env`` along.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from wsrt.brokers import free_port
from wsrt.process import Child

ROOT = Path(__file__).resolve().parents[2]
#: A new terminal: the system's PATH and a home, nothing of this test run's environment.
FRESH = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


@pytest.fixture
def dev_run(tmp_path: Path):
    """``bash scripts/dev.sh ARGS`` in the test's folder, stopped at the end."""
    started: list[Child[str]] = []

    def start(*args: str) -> Child[str]:
        env = {**FRESH, "WSRT_VENV": sys.prefix}  # this run's environment: no second install
        argv = ["bash", str(ROOT / "scripts" / "dev.sh"), *args]
        started.append(Child(argv, env=env, cwd=tmp_path, parse=lambda line: line.rstrip("\n")))
        return started[-1].start()

    yield start
    for dev in started:
        dev.stop(timeout=20)


def wait_line(dev: Child[str], pattern: str, timeout: float = 180) -> int:
    """The index of the first line of ``dev``'s stderr matching ``pattern``."""
    line = dev.wait_for(lambda text: re.search(pattern, text) is not None, timeout)
    assert line is not None, f"no {pattern!r}:\n" + "\n".join(dev.items)
    return dev.items.index(line)


def printed_commands(lines: list[str]) -> list[tuple[str, str]]:
    """(what the comment above says, the command) for each command of the banner, in order."""
    start = next(
        i for i, line in enumerate(lines) if line.strip().startswith("in another terminal")
    )
    commands, said = [], ""
    for line in lines[start + 1 :]:
        text = line.strip()
        if not line.startswith("    "):
            break
        if text.startswith("#"):
            said = text
        else:
            commands.append((said, text))
    return commands


def fresh_shell(command: str, folder: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-c", command], cwd=folder, env=FRESH, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def test_every_command_dev_sh_prints_runs_as_printed(dev_run, tmp_path: Path) -> None:
    port = free_port()
    dev = dev_run("--port", str(port), "--broker-port", str(free_port()))
    end = wait_line(dev, r"Ctrl-C stops everything")
    banner = dev.items[: end + 1]
    start = next(i for i, line in enumerate(banner) if "in another terminal, in" in line)
    assert banner[start].strip() == f"in another terminal, in {tmp_path}:"
    env_file = tmp_path / ".env"
    assert env_file.stat().st_mode & 0o777 == 0o600  # it holds the secret
    assert env_file.read_text().startswith("# written by wsrt dev")

    commands = printed_commands(banner)
    assert [c.split()[1] for _, c in commands if not c.startswith("echo")] == [
        "tail", "check", "loadtest",
    ]  # fmt: skip
    assert any(" produce " in c for _, c in commands)
    for said, command in commands:
        # No virtual environment is active in the new terminal: the path is printed.
        assert command.split("| ")[-1].startswith(f"{sys.prefix}/bin/wsrt "), command
        shell = fresh_shell(command, tmp_path)
        if "Ctrl-C" in said:  # runs until interrupted: it must show messages first
            assert shell.stdout is not None
            first = json.loads(shell.stdout.readline())
            assert first["type"] == "message" and first["channel"] == "lines", first
            os.killpg(shell.pid, signal.SIGINT)
        out, err = shell.communicate(timeout=120)
        assert shell.returncode == 0, f"{command}\n{out}\n{err}"
        if " check " in command:
            assert [line.split()[:2] for line in out.splitlines()] == [
                ["ok", "healthz"], ["ok", "livez"], ["ok", "subscribe"], ["ok", "kafka"],
            ]  # fmt: skip

    # The activate hint works: plain `wsrt` then is this one.
    hint = next(line for line in banner if "source " in line)
    activate = re.search(r"source (\S+/activate)", hint)
    assert activate, hint
    shell = fresh_shell(f"source {activate.group(1)} && command -v wsrt", tmp_path)
    out, _ = shell.communicate(timeout=30)
    assert out.strip() == f"{sys.prefix}/bin/wsrt"

    # And the console URL opens (tests/browser drives it in Chromium).
    url = next(line.strip() for line in banner if "/console#token=" in line)
    with urllib.request.urlopen(url.split("#")[0], timeout=10) as response:
        assert response.status == 200 and "text/html" in response.headers["Content-Type"]

    # The broker dies: wsrt dev says so, stops the rest and exits non-zero.
    (broker,) = [pid for pid in _descendants(dev.pid) if "tansu" in _cmdline(pid)]
    os.kill(broker, signal.SIGKILL)
    wait_line(dev, r"^error: embedded tansu broker on \S+ exited on its own \(code -9\); stopping$")
    assert dev.wait_exit(60) == 1
    assert dev.wait_for(lambda line: line == "wsrt dev: stopped", 10) is not None
    assert not env_file.exists()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return ""


def _descendants(ancestor: int) -> list[int]:
    """Every living process below ``ancestor``."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            parents[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [ancestor]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found
