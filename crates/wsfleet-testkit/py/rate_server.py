"""A rate-limiting WebSocket server for wsfleet's outbound rate tests (Python `websockets`).

Started by `wsfleet_testkit::RateServer`; runnable by hand too:

    .venv/bin/python crates/wsfleet-testkit/py/rate_server.py [--port N] [--limit 5] [--window 1.0]

Like an exchange that closes a connection sending too fast: it closes with 1008 (policy
violation) any connection that sends more than --limit messages (text or binary) within any
--window seconds, measured when each message reaches the handler (a sliding window: the
message that makes --limit + 1 in the last --window seconds is the offence). --slack SECS
(default 0) shortens the window the close rule uses by that much, to forgive the arrival
jitter of a loaded test machine (this process's own scheduling delays included) to a client
spacing its messages at exactly the limit. Messages are counted, never answered.

Reports: after `LISTENING <port>`, one JSON object per line on stdout:

    {"rate_close":{"conn":ID,"in_window":N}}                 a connection closed for its rate
    {"stats":{"id":N,"accepted":A,"open":O,"received":R,"rate_closes":C,
              "peak_window":P,"first_ms":F,"last_ms":L,
              "conns":{ID:{"received":R,"tightest_ms":T,"closed_for_rate":B}}}}
                                                             the answer to `stats N` on stdin

Connection ids count from 1 in accept order. `peak_window` is the most messages of all
connections together within one window; `first_ms`/`last_ms` the first and last message's
arrival, in ms since the server started (null before any); `tightest_ms` the shortest time
a connection took for --limit + 1 consecutive messages (null with fewer), the figure the
close rule compares with the window.

stdin takes commands, one a line: `stats [ID]`. Binds 127.0.0.1 only. With
--exit-on-stdin-eof the server exits when its stdin closes, so it never outlives the test
process that started it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from reporting_peer import serve_reporting



@dataclass
class Conn:
    id: int
    received: int = 0
    # Arrival times within the last window.
    window: deque[float] = field(default_factory=deque)
    # The last --limit + 1 arrival times.
    recent: deque[float] = field(default_factory=deque)
    tightest: float | None = None
    closed_for_rate: bool = False


class Limiter:
    def __init__(self, args: argparse.Namespace) -> None:
        self.limit: int = args.limit
        self.window: float = args.window
        self.rule_window: float = args.window - args.slack
        self.ids = itertools.count(1)
        self.conns: dict[int, Conn] = {}
        self.open = 0
        self.received = 0
        self.rate_closes = 0
        # Arrival times of all connections within the last window.
        self.all_window: deque[float] = deque()
        self.peak_window = 0
        self.start = asyncio.get_running_loop().time()
        self.first: float | None = None
        self.last: float | None = None

    @staticmethod
    def report(event: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def ms(self, t: float | None) -> float | None:
        return None if t is None else round((t - self.start) * 1000.0, 3)

    def command(self, line: str) -> None:
        words = line.split()
        if words and words[0] == "stats":
            ident = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
            self.report({"stats": {"id": ident, **self.stats()}})
        elif words:
            logging.warning("unknown stdin command %r", line.strip())

    def stats(self) -> dict[str, Any]:
        return {
            "accepted": len(self.conns),
            "open": self.open,
            "received": self.received,
            "rate_closes": self.rate_closes,
            "peak_window": self.peak_window,
            "first_ms": self.ms(self.first),
            "last_ms": self.ms(self.last),
            "conns": {
                str(c.id): {
                    "received": c.received,
                    "tightest_ms": None if c.tightest is None else round(c.tightest * 1000.0, 3),
                    "closed_for_rate": c.closed_for_rate,
                }
                for c in self.conns.values()
            },
        }

    def arrived(self, conn: Conn) -> bool:
        """Counts one message; True if it breaks the rate."""
        now = asyncio.get_running_loop().time()
        self.received += 1
        conn.received += 1
        if self.first is None:
            self.first = now
        self.last = now
        for w, span in ((conn.window, self.rule_window), (self.all_window, self.window)):
            w.append(now)
            while w and w[0] <= now - span:
                w.popleft()
        self.peak_window = max(self.peak_window, len(self.all_window))
        conn.recent.append(now)
        if len(conn.recent) > self.limit + 1:
            conn.recent.popleft()
        if len(conn.recent) == self.limit + 1:
            span = conn.recent[-1] - conn.recent[0]
            conn.tightest = span if conn.tightest is None else min(conn.tightest, span)
        return len(conn.window) > self.limit

    async def handler(self, ws: ServerConnection) -> None:
        conn = Conn(next(self.ids))
        self.conns[conn.id] = conn
        self.open += 1
        try:
            async for _ in ws:
                if self.arrived(conn) and not conn.closed_for_rate:
                    conn.closed_for_rate = True
                    self.rate_closes += 1
                    self.report({"rate_close": {"conn": conn.id, "in_window": len(conn.window)}})
                    await ws.close(
                        1008, f"rate limit: more than {self.limit} messages in {self.window} s"
                    )
                    break
        except ConnectionClosed:
            pass
        finally:
            self.open -= 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: 0)")
    parser.add_argument("--limit", type=int, default=5, help="messages allowed per window")
    parser.add_argument("--window", type=float, default=1.0, help="window in seconds")
    parser.add_argument("--slack", type=float, default=0.0, help="seconds the rule forgives")
    parser.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="exit when stdin closes"
    )
    args = parser.parse_args()
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    if not args.window > 0:
        parser.error("--window must be above zero")
    if not 0 <= args.slack < args.window:
        parser.error("--slack must be in [0, --window)")
    return args


async def main() -> None:
    args = parse_args()
    limiter = Limiter(args)
    await serve_reporting(
        "rate_server", limiter.handler, args.port, limiter.command, args.exit_on_stdin_eof
    )


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
