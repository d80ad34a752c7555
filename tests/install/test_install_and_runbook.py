"""The image's install path, and every command of RUNBOOK.md, run for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
import venv
import zipfile
from pathlib import Path

from tests.integration.harness import SECRET
from wsrt.brokers import create_topics, free_port

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=600, **kwargs)


async def test_wheel_installs_into_a_fresh_environment_and_serves(bootstrap, tmp_path) -> None:
    dist = tmp_path / "dist"
    built = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("wsrt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "wsrt/load/ws_realtime_k6.js" in names
    assert "wsrt/brokers/kafka/pom.xml" in names
    # The browser files the server serves (design section 12).
    for name in ("client.js", "console.html", "console.js", "console.css", "favicon.svg"):
        assert f"wsrt/web/{name}" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    installed = run(str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheel))
    assert installed.returncode == 0, installed.stderr
    wsrt = str(bin_dir / "wsrt")
    assert "serve" in run(wsrt, "--help").stdout
    assert "--subscribe" in run(wsrt, "check", "--help").stdout
    # Every Kafka codec comes with the package (design section 9).
    codecs = run(str(bin_dir / "python"), "-c", (
        "from aiokafka import codec as c\n"
        "for name in ('gzip', 'snappy', 'lz4', 'zstd'):\n"
        "    data = b'{\"wsrt\": 1}' * 50\n"
        "    assert getattr(c, f'{name}_decode')(getattr(c, f'{name}_encode')(data)) == data, name\n"
        "print('all codecs')"
    ))  # fmt: skip
    assert codecs.stdout.strip() == "all codecs", codecs.stderr

    port = free_port()
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "WS_AUTH_SECRET": SECRET, "WS_KAFKA_BROKERS": bootstrap,
        "WS_BIND_ADDRESS": f"127.0.0.1:{port}", "WS_URL": f"ws://127.0.0.1:{port}/ws",
        "WS_KAFKA_TOPICS": "installed",
    }  # fmt: skip
    await create_topics(bootstrap, {"installed": 1})
    server = subprocess.Popen(
        [wsrt, "serve"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        check = run(wsrt, "check", "--wait", "60", env=env, cwd=tmp_path)
        assert check.returncode == 0, check.stdout + check.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/client.js", timeout=10) as answer:
            assert b"export function connect" in answer.read()
    finally:
        server.terminate()
        _, log = server.communicate(timeout=30)
    assert server.returncode == 0, log
    assert "shutdown complete" in log


def runbook_blocks() -> tuple[list[str], list[str]]:
    """(runnable, external) bash blocks of RUNBOOK.md, in order."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (ROOT / "RUNBOOK.md").read_text(), re.M | re.S)
    external = [b for b in blocks if b.startswith("# needs ")]
    return [b for b in blocks if b not in external], external


def test_external_blocks_only_need_what_they_say() -> None:
    _, external = runbook_blocks()
    assert external
    for block in external:
        need = block.splitlines()[0]
        assert need in ("# needs Docker", "# needs a Kubernetes cluster"), need
        commands = [
            line.split()[0]
            for line in block.splitlines()[1:]
            if line and not line.startswith((" ", "#"))
        ]
        tools = {
            "# needs Docker": {"docker", "docker-compose", "export"},
            "# needs a Kubernetes cluster": {"kubectl"},
        }
        assert set(commands) <= tools[need], block


async def test_every_runbook_command_runs(bootstrap, tmp_path) -> None:
    runnable, _ = runbook_blocks()
    assert len(runnable) >= 5
    await create_topics(bootstrap, {t: 3 for t in ("lines", "order_book", "analytics")})
    port = free_port()
    script = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for number, block in enumerate(runnable, 1):
        script += [f"echo '::runbook block {number}::' >&2", block]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "WS_AUTH_SECRET": SECRET,
        "WS_KAFKA_BROKERS": bootstrap,
        "WS_BIND_ADDRESS": f"127.0.0.1:{port}",
        "WS_URL": f"ws://127.0.0.1:{port}/ws",
        "WS_KAFKA_FETCH_MAX_WAIT_SECONDS": "0.05",
        "K6_NO_USAGE_REPORT": "true",
    }
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    failed_in = re.findall(r"::runbook block (\d+)::", result.stderr)
    assert result.returncode == 0, (
        f"block {failed_in[-1] if failed_in else '?'} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    assert len(failed_in) == len(runnable)
    assert re.search(r"^ok\s+kafka\s+.*order_book 3p", result.stdout, re.M)
    assert "messages received" in result.stdout
