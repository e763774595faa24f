"""Benchmark 1, ack latency: 50 concurrent, correctly signed slash commands and button clicks against a real
`rollback-bot serve`, in several rounds; p50 / p95 / p99 of the time until the HTTP answer (Slack's ack).

Phases: (a) an incident is open (its warning is in the channel), (b) right after an approver pressed
Roll back, while the plan executes and the verification loop runs (every 1 s, `stable_for` 30 s). Each
round writes 50 requests at once on 50 connections opened beforehand (one asyncio thread, so the client
adds little): `/rollback help`, `/rollback status`, Dry run clicks by the approver, and Roll back clicks by
a non-approver (refused). For scale it also measures one request at a time, and 50 concurrent GET /healthz
on the same process (the floor of the HTTP server and the machine). Target: p99 <= 50 ms (Slack gives up
after 3,000 ms).
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from _common import Row, Stage, ms, percentile, report

from sandbox.signing import block_actions_body, signed_headers, slash_command_body
from tests.story_env import APPROVER, SECRET, STRANGER, button

CONCURRENCY = 50
ROUNDS = 6


def bodies(stage: Stage, message: dict[str, object]) -> list[str | None]:
    """50 different request bodies, to be signed when sent: a quarter of each kind."""
    out: list[str | None] = []
    for i in range(CONCURRENCY):
        kind = i % 4
        if kind == 0:
            out.append(slash_command_body(text="help", user_id=APPROVER, channel_id=stage.CHANNEL))
        elif kind == 1:
            out.append(slash_command_body(text="status", user_id=APPROVER, channel_id=stage.CHANNEL,
                                          response_url=stage.slack.response_url))
        else:
            action = "rollback_dry_run" if kind == 2 else "rollback_approve"
            user = APPROVER if kind == 2 else STRANGER
            out.append(block_actions_body(user_id=user, channel_id=stage.CHANNEL, message_ts=str(message["ts"]),
                                          action_id=action, value=button(message, action)["value"],
                                          message=message, response_url=stage.slack.response_url))
    return out


def request_bytes(url: str, body: str | None) -> bytes:
    """One HTTP/1.1 request: a signed POST of `body`, or a GET when body is None."""
    parts = urlsplit(url)
    if body is None:
        return f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode()
    headers = {**signed_headers(SECRET, body), "Host": parts.netloc, "Content-Length": str(len(body.encode())),
               "Connection": "close"}
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST {parts.path} HTTP/1.1\r\n{head}\r\n".encode() + body.encode()


def burst(url: str, payloads: list[str | None]) -> list[float]:
    """Send every request at the same moment, each on its own connection opened beforehand; the seconds
    each took from being written to its whole answer being read (HTTP 200 required).

    One asyncio thread drives all 50 connections, so the client adds little to what it measures.
    """
    async def run() -> list[float]:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        raw = [request_bytes(url, body) for body in payloads]
        conns = [await asyncio.open_connection(host, port) for _ in raw]

        async def one(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], data: bytes) -> float:
            reader, writer = conn
            started = time.perf_counter()
            writer.write(data)
            await writer.drain()
            answer = await reader.read()  # Connection: close, so the answer ends with EOF
            took = time.perf_counter() - started
            writer.close()
            status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b"?"
            if status != b"200":
                raise RuntimeError(f"HTTP {status.decode()}: {answer[:300]!r}")
            return took

        return list(await asyncio.gather(*(one(c, d) for c, d in zip(conns, raw, strict=True))))

    return asyncio.run(run())


def rounds(stage: Stage, message: dict[str, object], count: int, gap: float = 1.0) -> list[float]:
    out: list[float] = []
    for _ in range(count):
        out += burst(stage.events_url, bodies(stage, message))
        time.sleep(gap)  # let the lazy work of the round (posts, plans) run, as between real clicks
    return out


def main() -> None:
    with Stage(services=1, for_="2s", stable_for="30s", within="90s") as stage:
        name = stage.names[0]
        stage.break_service(name)
        message, _ = stage.warning_for(name)
        burst(stage.events_url, bodies(stage, message))  # warm-up round, not counted
        time.sleep(2)
        alone = [burst(stage.events_url, [body])[0] for body in bodies(stage, message)[:20] for _ in [time.sleep(0.1)]]
        health: list[float] = []
        for _ in range(ROUNDS):
            health += burst(f"{stage.bot.url}/healthz", [None] * CONCURRENCY)
            time.sleep(0.2)
        open_phase = rounds(stage, message, ROUNDS)
        stage.click(message, "rollback_approve")
        busy_phase = rounds(stage, message, ROUNDS)
        states = [(i["state"], len(i["steps"])) for i in stage.incident_rows()]
    rows = []
    for label, values in (("incident open", open_phase), ("plan executing + verification loop", busy_phase)):
        p50, p95, p99 = (percentile(values, p) for p in (50, 95, 99))
        rows.append(Row("1 ack latency", f"{CONCURRENCY} concurrent signed requests, {label}: p50 / p95 / p99",
                        f"{ms(p50)} / {ms(p95)} / {ms(p99)}", "p99 <= 50 ms", p99 <= 0.050))
    everything = open_phase + busy_phase
    rows.append(Row("1 ack latency", "for scale: one request at a time p50 / p99; 50 concurrent GET /healthz p99",
                    f"{ms(percentile(alone, 50))} / {ms(percentile(alone, 99))}; {ms(percentile(health, 99))}",
                    "report", None))
    notes = [f"{len(everything)} requests in {2 * ROUNDS} rounds; slowest {ms(max(everything))}; "
             f"Slack's limit is 3,000 ms",
             f"incident state at the end: {states}"]
    report("1 ack latency", rows, notes)


if __name__ == "__main__":
    main()
