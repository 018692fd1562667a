"""The training progress bar as a user sees it: at 80 columns and up, steps done / total,
images/s and the time left stay visible and the metrics take what is left; when a training
call ends, one line stays with its final loss, time and images/s."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import pytest
from rich.console import Console

from strop.training.curriculum import phase_label
from strop.training.log import ProgressBar

# A metrics row as the trainer logs it mid-run (every loss term, like phase 2's).
ROW = {
    "phase": 2,
    "align_loss": 1.2601,
    "commit_loss": 0.0302,
    "diversity_loss": 0.9123,
    "length_loss": 0.0,
    "loss": 1.3457,
    "pixel_loss": 0.0712,
    "oracle_loss": 0.5,
    "mean_length": 7.84,
    "images_per_s": 231.4,
}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def render(width: int) -> tuple[list[str], str]:
    """The bar's lines at `width` columns after two updates, and the line left at the end."""
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    bar = ProgressBar(True, 1200, 0, label="train k64", images_per_step=32, console=console)
    with bar:
        bar.update(300, ROW)
        time.sleep(0.2)  # rich estimates the rate, hence the time left, from two samples
        bar.update(600, ROW)
        frame = io.StringIO()
        Console(file=frame, width=width, color_system=None).print(bar.progress.get_renderable())
    return frame.getvalue().rstrip("\n").splitlines(), ANSI.sub("", out.getvalue())


@pytest.mark.parametrize("width", [80, 100, 175, 240])
def test_step_total_rate_and_eta_come_first_at_any_width(width: int) -> None:
    lines, _ = render(width)
    assert len(lines) == 1, lines
    line = lines[0]
    assert len(line) <= width
    assert re.search(r"train k64 +600/1200 +231 img/s +ETA +\d+:\d\d:\d\d", line), line
    # Metrics use what is left, cut rather than wrapped; the phase is the paper's name.
    assert "phase 2/4" in line or width <= 80
    if width >= 175:
        assert "phase 2/4 oracle loss=1.346 L=7.8 align=1.260" in line, line


def test_a_finished_call_leaves_one_line_with_loss_time_and_rate() -> None:
    _, screen = render(80)
    last = [line for line in screen.splitlines() if line.strip()][-1]
    assert re.fullmatch(
        r"train k64: stopped at 600/1200 steps in \d+ s, \d+ img/s; final loss 1\.346, "
        r"mean length 7\.8",
        last.strip(),
    ), last
    assert "━" not in last


def test_phases_are_named_as_the_paper_names_them() -> None:
    assert [phase_label(p) for p in range(6)] == [
        "fixed length (baseline)",
        "phase 1/4 random",
        "phase 2/4 oracle",
        "phase 3/4 head",
        "phase 4/4 handoff",
        "after phase 4: predicted lengths",
    ]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_in_a_real_80_column_terminal_the_bar_shows_step_total_and_eta() -> None:
    """The bar in a real pseudo-terminal of 80 x 24: rich finds the width itself."""
    import fcntl
    import pty
    import struct
    import termios

    script = (
        "import time\n"
        "from strop.training.log import ProgressBar\n"
        f"row = {ROW!r}\n"
        "with ProgressBar(True, 1200, 0, label='train k64', images_per_step=32) as bar:\n"
        "    bar.update(300, row); time.sleep(0.3); bar.update(600, row)\n"
        "    bar.progress.refresh(); time.sleep(0.3)\n"
    )
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TERM")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=follower, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")
    # rich redraws the bar in place (carriage return, cursor codes): one frame per piece.
    raw = b"".join(chunks).decode(errors="replace")
    frames = [ANSI.sub("", piece) for piece in re.split(r"[\r\n]+", raw)]
    bars = [f for f in frames if "600/1200 " in f and "ETA" in f]
    assert bars, frames
    assert re.search(r"600/1200 +231 img/s +ETA +\d+:\d\d:\d\d", bars[-1]), bars[-1]
    assert all(len(f.rstrip()) <= 80 for f in frames if "ETA" in f), frames
    assert any(f.startswith("train k64: stopped at 600/1200 steps") for f in frames), frames
