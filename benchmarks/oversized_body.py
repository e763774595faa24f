"""Benchmark 7, oversized bodies: how much memory a real `rollback-bot serve` takes on while refusing an
unsigned 300 MiB upload (issue 11, finding 4: it used to read the whole body before the signature check).

One `serve` process (tests.story_env.BotProcess: fake Slack Web API, Prometheus and MLflow URLs on closed
local ports, ALERTMANAGER_TOKEN set) gets, one after the other, a real 300 MiB body streamed from a generator
in 256 KiB pieces over a raw socket: to /slack/events and /alertmanager, each once with
`Content-Length: 314572800` and once chunked (Transfer-Encoding: chunked, no Content-Length). The sender stops
as soon as the server answers or closes. Before and after each, VmRSS and VmHWM (the peak RSS so far) are read
from /proc/PID/status. Figures: RSS growth per request (target < 20 MiB) with the peak's growth, the status
the server answered (413 expected; "closed" if it hung up first), how much of the body it let through and how
long that took. Everything is on 127.0.0.1; every socket operation has a timeout.
"""

from __future__ import annotations

import select
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from _common import ONE_SERVICE_POLICY as POLICY
from _common import Row, report

from sandbox.servers import free_port
from sandbox.slack_api import FakeSlackAPI
from tests.story_env import BotProcess

HUGE = 300 << 20  # 314572800 bytes, the audit's 300 MiB
PIECE = 256 << 10
TIMEOUT = 10.0  # seconds for any one socket operation
DEADLINE = 120.0  # seconds for one whole upload, however slow
TARGET_MIB = 20.0
AM_TOKEN = "bench-am-token-0123456789"


@dataclass(frozen=True)
class Upload:
    status: str  # "413", "401", ... or "closed" (hung up without an answer)
    sent: int  # body bytes the server took before answering or closing
    seconds: float


def status_mib(pid: int, field: str) -> float:
    """A /proc/PID/status memory figure (VmRSS, VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def reset_peak(pid: int) -> bool:
    """Start VmHWM again from the current RSS (Linux 4.0+: write 5 to clear_refs); False when not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:  # an older kernel or a locked-down /proc: the peaks are then since the start
        return False
    return True


def body(chunked: bool) -> Iterator[bytes]:
    """HUGE bytes of body, PIECE at a time, as chunks when `chunked` (with the last chunk)."""
    piece = b"x" * PIECE
    frame = f"{PIECE:x}\r\n".encode()
    for _ in range(HUGE // PIECE):
        yield frame + piece + b"\r\n" if chunked else piece
    if chunked:
        yield b"0\r\n\r\n"


def upload(port: int, path: str, *, chunked: bool) -> Upload:
    """POST HUGE unsigned bytes to `path`, stopping once the server answers or closes."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {HUGE}"
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"{framing}\r\n\r\n").encode()
    sent, started = 0, time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(head)
        for piece in body(chunked):
            if select.select([sock], [], [], 0)[0] or time.monotonic() - started > DEADLINE:
                break  # an answer or the close came first (or the deadline passed): stop sending
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break  # the server hung up or stopped reading: its answer, if any, is read below
            sent += PIECE
        answer = b""
        try:
            while b"\r\n" not in answer:
                data = sock.recv(4096)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass  # reset after the close, or nothing said within TIMEOUT: reported as "closed"
    seconds = time.monotonic() - started
    status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/") else "closed"
    return Upload(status, min(sent, HUGE), seconds)


def main() -> None:
    cases = [("/slack/events", False), ("/slack/events", True), ("/alertmanager", False), ("/alertmanager", True)]
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="rollback-bench-") as tmp, FakeSlackAPI() as slack:
        workdir = Path(tmp)
        (workdir / "policy.yaml").write_text(POLICY)
        bot = BotProcess(workdir, workdir / "policy.yaml", slack_url=slack.url,
                         prometheus_url=f"http://127.0.0.1:{free_port()}", mlflow_url=f"http://127.0.0.1:{free_port()}",
                         extra_env={"ALERTMANAGER_TOKEN": AM_TOKEN})
        bot.start(timeout=60)
        try:
            assert bot.proc is not None
            pid = bot.proc.pid
            for path, _ in cases[::2]:  # warm up each route with a small unsigned request (imports, a thread)
                small = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n"
                         "\r\n{}").encode()
                with socket.create_connection(("127.0.0.1", bot.port), timeout=TIMEOUT) as sock:
                    sock.sendall(small)
                    sock.recv(4096)
            time.sleep(1.0)
            start_rss = status_mib(pid, "VmRSS")
            per_case = True
            for path, chunked in cases:
                per_case = reset_peak(pid) and per_case
                rss, peak = status_mib(pid, "VmRSS"), status_mib(pid, "VmHWM")
                done = upload(bot.port, path, chunked=chunked)
                time.sleep(0.5)  # let the server finish with the connection
                grew, peak_grew = status_mib(pid, "VmRSS") - rss, status_mib(pid, "VmHWM") - peak
                how = "chunked" if chunked else "Content-Length 314572800"
                refused = done.status in ("413", "closed")
                rows.append(Row("7 oversized body", f"RSS growth of serve refusing an unsigned 300 MiB POST {path} ({how})",
                                f"{grew:+.1f} MiB after, peak {peak_grew:+.1f} MiB; HTTP {done.status}; "
                                f"{done.sent / (1 << 20):.1f} MiB taken in {done.seconds:.2f} s",
                                f"< {TARGET_MIB:.0f} MiB", max(grew, peak_grew) < TARGET_MIB and refused))
            notes.append(f"serve RSS {start_rss:.0f} MiB before the uploads, {status_mib(pid, 'VmRSS'):.0f} MiB after "
                         f"(peak {status_mib(pid, 'VmHWM'):.0f} MiB); `taken` counts the 256 KiB pieces the "
                         "kernel accepted before the answer or the close, socket buffers included")
            notes.append("peak = growth of VmHWM during that request (reset before each)" if per_case else
                         "peak = growth of VmHWM since the start (it could not be reset: later peaks can hide)")
        finally:
            bot.stop()
    report("7 oversized body", rows, notes)


if __name__ == "__main__":
    main()
