"""Child processes that wsrt starts (brokers, servers): read their lines, stop them in time.

:class:`Child` is the one helper for the brokers, ``wsrt dev``, the test
harness and the benchmarks: the child dies with its parent (Linux
``PR_SET_PDEATHSIG``), runs in its own session (a terminal's Ctrl-C reaches
the parent, which stops its children in order), a thread reads its output
line by line, and callers wait on lines — events, never time.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Generic, TextIO, TypeVar

_T = TypeVar("_T")

#: prctl(2) option: the signal a child receives when its parent thread exits.
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """``preexec_fn``: the child gets SIGKILL when its parent dies (Linux)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def terminate(process: subprocess.Popen[str] | subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; returns once it exited."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Child(Generic[_T]):
    """A child process and the lines of one of its streams, each turned into an item.

    ``parse`` turns a line into the item kept (default: the line); ``echo``
    copies every line to a stream (``wsrt dev`` relays the server's log);
    ``log_path`` appends the raw lines to a file (broker logs). With
    ``merge_stderr`` the child's stderr goes to the same pipe as its stdout;
    otherwise stderr is the stream read and stdout is discarded.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        parse: Callable[[str], _T] = lambda line: line,  # type: ignore[assignment,return-value]
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        merge_stderr: bool = False,
        echo: TextIO | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.parse = parse
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.merge_stderr = merge_stderr
        self.echo = echo
        self.log_path = log_path
        self.items: list[_T] = []
        #: True once the stream ended (the child exited or closed it).
        self.ended = False
        self.process: subprocess.Popen[str] | None = None
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self) -> Child[_T]:
        self.items, self.ended = [], False
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.merge_stderr else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self.merge_stderr else subprocess.PIPE,
            text=True,
            errors="replace",
            preexec_fn=die_with_parent,
            start_new_session=True,
        )
        stream = self.process.stdout if self.merge_stderr else self.process.stderr
        assert stream is not None
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()
        return self

    def _read(self, stream: TextIO) -> None:
        log = open(self.log_path, "a") if self.log_path is not None else None  # noqa: SIM115
        try:
            for line in stream:
                if log is not None:
                    log.write(line)
                    log.flush()
                if self.echo is not None:
                    self.echo.write(line)
                    self.echo.flush()
                item = self.parse(line)
                with self._cond:
                    self.items.append(item)
                    self._cond.notify_all()
        finally:
            if log is not None:
                log.close()
            with self._cond:
                self.ended = True
                self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[_T], bool], timeout: float, start: int = 0
    ) -> _T | None:
        """The first item from index ``start`` that satisfies ``predicate``.

        ``None`` when the stream ended or ``timeout`` passed without one.
        """
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for item in self.items[seen:]:
                    if predicate(item):
                        return item
                seen = len(self.items)
                remaining = deadline - time.monotonic()
                if self.ended or remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def mark(self) -> int:
        """The index of the next item: wait for what happens after now."""
        with self._cond:
            return len(self.items)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def poll(self) -> int | None:
        return self.process.poll() if self.process is not None else 0

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; the reader thread is joined."""
        process, self.process = self.process, None
        if process is not None:
            terminate(process, timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)


def raise_open_files() -> int:
    """Raise this process's soft open-file limit to the hard one; the limit now.

    Every connection is a file: a server (or load client) for tens of thousands
    of connections needs more than the usual soft limit of 1,024. The hard
    limit is the operator's (``ulimit -Hn``, systemd ``LimitNOFILE``, the
    container runtime's ``nofile``).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
