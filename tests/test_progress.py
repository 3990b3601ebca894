"""Progress: plain lines off a terminal (final state once), one line in place on a terminal."""

from __future__ import annotations

import fcntl
import io
import os
import select
import struct
import termios

from poolsieve.core.progress import Progress


def test_plain_lines_print_the_final_state_once() -> None:
    out = io.StringIO()
    p = Progress("scan", total=3, unit="shards", interval=3600, stream=out)
    for _ in range(3):
        p.update(1, items=10)
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the first update, then the one that reached the total; close() does not repeat it
    assert lines[0].startswith("scan: 1/3 shards")
    assert lines[-1].startswith("scan: 3/3 shards | 30 samples") and "ETA" not in lines[-1]


def test_unknown_total_and_quiet() -> None:
    out = io.StringIO()
    p = Progress("read", total=None, stream=out, interval=0)
    p.update(5)
    p.close()
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[0]] and "read: 5 units" in out.getvalue()
    quiet = io.StringIO()
    q = Progress("x", total=2, stream=quiet, quiet=True)
    q.update(2)
    q.close()
    assert quiet.getvalue() == ""


def test_a_terminal_gets_one_line_updated_in_place() -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    with os.fdopen(slave, "w") as tty:
        p = Progress("score", total=4, unit="shards", stream=tty)
        for _ in range(4):
            p.update(1, items=100)
        p.close()
    chunks = []
    while select.select([master], [], [], 0.5)[0]:
        try:
            chunks.append(os.read(master, 65536))
        except OSError:  # EIO: the terminal's other end is closed and everything has been read
            break
    os.close(master)
    text = b"".join(chunks).decode()
    assert "\r" in text and text.count("\n") == 1  # redrawn with carriage returns, one final newline
    assert "score" in text and "4/4" in text and "400 samples" in text
