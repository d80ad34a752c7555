"""Progress on long steps: a status line on a terminal, whole lines when piped."""

from __future__ import annotations

import io
import os

import pytest

from wsrt.tools import progress as progress_module
from wsrt.tools.progress import Progress, is_terminal


@pytest.fixture(autouse=True)
def every_update_draws(monkeypatch) -> None:
    monkeypatch.setattr(progress_module, "REDRAW_SECONDS", 0)


def test_piped_progress_is_whole_lines_and_no_updates() -> None:
    out = io.StringIO()
    p = Progress("wsrt loadtest", out, live=False)
    p.start("running k6 …")
    for n in range(5):
        p.update(f"{n}s / 30s")
    p.finish("k6 done in 30s")
    assert out.getvalue() == "wsrt loadtest: running k6 …\nwsrt loadtest: k6 done in 30s\n"


def test_terminal_progress_redraws_one_line_then_ends_it() -> None:
    out = io.StringIO()
    p = Progress("wsrt loadtest", out, live=True)
    p.start("running k6 …")
    p.update("1s / 30s")
    p.update("2s / 30s")
    p.finish("k6 done")
    assert out.getvalue() == (
        "wsrt loadtest: running k6 …\n"
        "\r\x1b[2Kwsrt loadtest: 1s / 30s"
        "\r\x1b[2Kwsrt loadtest: 2s / 30s"
        "\r\x1b[2Kwsrt loadtest: k6 done\n"
    )


def test_a_status_line_never_wraps(monkeypatch) -> None:
    monkeypatch.setattr(
        progress_module.shutil, "get_terminal_size", lambda fallback: os.terminal_size((40, 24))
    )
    out = io.StringIO()
    Progress("wsrt", out, live=True).update("x" * 100)
    drawn = out.getvalue().removeprefix("\r\x1b[2K")
    assert len(drawn) == 39 and drawn.endswith("…")


def test_only_a_real_terminal_gets_the_live_line(monkeypatch) -> None:
    assert not is_terminal(io.StringIO())
    assert Progress("wsrt", io.StringIO()).live is False
