"""A numbered-feed WebSocket server for wsfleet's stream-integrity tests (Python `websockets`).

Started by `wsfleet_testkit::FeedServer`; runnable by hand too:

    .venv/bin/python crates/wsfleet-testkit/py/feed_server.py [--port N] [--rate R] ...

It behaves like a market-data feed: named channels, each with one sequence counter,
and every subscriber of a channel receives the same numbered messages from the moment
it subscribes. It can misbehave on purpose, and reports each misbehaviour on stdout
so a test can tell a reported fault from one the client failed to notice.

Protocol (JSON text messages; binary or malformed messages get an error):

    client -> {"op":"subscribe","channel":NAME}
    server -> {"event":"subscribed","channel":NAME}
              then, while subscribed: {"channel":NAME,"seq":N,"data":"..."}
    client -> {"op":"unsubscribe","channel":NAME}
    server -> {"event":"unsubscribed","channel":NAME}     (delivery has stopped)
    client -> {"op":"ping","id":X}
    server -> {"op":"pong","id":X}                        (X echoed as is; no "id", none back)
    client -> {"op":"stats"}
    server -> {"event":"stats","conn":ID,...}             (the stats object below, plus
                                                           this connection's id)
    errors -> {"event":"error","code":CODE[,"channel":NAME][,"message":TEXT]}
              CODE: too_many_channels (subscribe beyond --max-channels; no subscription),
                    bad_request (not a JSON object, unknown op, channel not a string)

Channels exist on first subscribe (any name). A channel's counter ticks --rate times a
second (seq 1, 2, 3, ...; a channel's first message comes within one period of its first
subscribe) and is shared by all connections; it pauses while the channel has no
subscription and resumes where it stopped.

One clock task drives every channel: on each tick it advances the counter of every channel
with a subscription, builds each channel's message and its WebSocket frame once, and gives
each connection the frames of the channels it receives in one write. With 1,000
connections x 10 channels at 10 messages a second that is 10,000 writes a second instead
of 100,000 (websockets' `broadcast()`, one write per message and connection, took a whole
core for 200 connections' worth). The frames are written to the transport directly: no
extension is ever negotiated (compression=None) and server frames are unmasked, so they
are exactly what `websockets` would write; connections that are no longer open are skipped.
`data` is --size dots (default 16). Subscribing twice is a no-op (acknowledged again);
unsubscribing a channel not subscribed is acknowledged too. Transport pings are answered
by `websockets`; this server sends none (ping_interval=None).

Faults (all off by default; --seed makes the random choices reproducible up to timing):

    --skip-ratio P            each sequence number of a channel is skipped with probability
                              P: sent to no one, the counter still advances
    --silence-every SECS      every SECS one random live (connection, channel) subscription,
                              of a channel no other connection subscribes to, goes silent:
                              that channel is no longer sent to that connection
                              (pings, other channels and requests are still answered) until
                              the connection unsubscribes it or subscribes it again
    --kill-ratio-per-minute P spread over each minute, that share of the live connections is
                              dropped abruptly (transport abort: no close frame)

Reports: after `LISTENING <port>`, one JSON object per line on stdout, in the order the
events happened:

    {"skip":{"channel":NAME,"seq":N}}                       each skipped number, exactly once
    {"silence":{"conn":ID,"channel":NAME}}                  a subscription went silent
    {"restore":{"conn":ID,"channel":NAME,"by":HOW,"after_ms":MS}}
                                                            a silenced subscription ended;
                                                            HOW: subscribe, unsubscribe, closed
    {"kill":{"conn":ID}}                                    a connection was dropped
    {"stats":{"id":N,"connections":LIVE,"accepted":TOTAL,"kills":K,"silences":S,
              "channels":{NAME:{"seq":N,"sent":N,"skipped":N,"subscribers":N}}}}
                                                            the answer to `stats N` on stdin

Connection ids count from 1 in accept order. In the stats, `seq` is the channel's last
number (sent or skipped), `sent` the last number sent (highest seq broadcast), `skipped`
how many were skipped, `subscribers` its subscriptions (silenced ones included). A stats
line comes after the reports of every event before it.

stdin takes commands, one a line: `stats [ID]` prints a stats line. Binds 127.0.0.1 only
(port 0 = the OS picks unless --port). Everything but the reports goes to stderr. With
--exit-on-stdin-eof the server exits when its stdin closes, so it never outlives the test
process that started it, even after a SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import random
import sys
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from reporting_peer import serve_reporting



@dataclass
class Conn:
    """One accepted connection and its subscriptions."""

    id: int
    ws: ServerConnection
    # Subscribed channel names, insertion-ordered (silenced ones included).
    subs: dict[str, None] = field(default_factory=dict)
    # Silenced channel name -> loop time it went silent.
    silenced: dict[str, float] = field(default_factory=dict)
    # The channels written to it: subscribed and not silenced, in subscribe order.
    receiving: dict[str, None] = field(default_factory=dict)


@dataclass
class Channel:
    """A named feed with one sequence counter shared by every subscriber."""

    name: str
    # The name as a JSON string, encoded once.
    name_json: str
    seq: int = 0
    sent: int = 0
    skipped: int = 0
    # Every subscription (silenced ones included); the counter ticks while it is not empty.
    members: set[int] = field(default_factory=set)


class Feed:
    """The server's state: channels, connections, fault injection and reports."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.rate: float = args.rate
        self.size: int = args.size
        self.max_channels: int | None = args.max_channels
        self.skip_ratio: float = args.skip_ratio
        self.silence_every: float | None = args.silence_every
        self.kill_ratio: float = args.kill_ratio_per_minute
        self.rng = random.Random(args.seed)
        self.channels: dict[str, Channel] = {}
        self.conns: dict[int, Conn] = {}
        self.ids = itertools.count(1)
        self.accepted = 0
        self.kills = 0
        self.silences = 0
        self.tasks: set[asyncio.Task[None]] = set()

    # -- reports -----------------------------------------------------------------

    @staticmethod
    def report(event: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def stats(self) -> dict[str, Any]:
        return {
            "connections": len(self.conns),
            "accepted": self.accepted,
            "kills": self.kills,
            "silences": self.silences,
            "channels": {
                ch.name: {
                    "seq": ch.seq,
                    "sent": ch.sent,
                    "skipped": ch.skipped,
                    "subscribers": len(ch.members),
                }
                for ch in self.channels.values()
            },
        }

    def command(self, line: str) -> None:
        """A command line from stdin (run on the event loop)."""
        words = line.split()
        if words and words[0] == "stats":
            ident = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
            self.report({"stats": {"id": ident, **self.stats()}})
        elif words:
            logging.warning("unknown stdin command %r", line.strip())

    # -- channels ----------------------------------------------------------------

    def channel(self, name: str) -> Channel:
        ch = self.channels.get(name)
        if ch is None:
            ch = Channel(name, json.dumps(name))
            self.channels[name] = ch
        return ch

    async def clock(self) -> None:
        """Ticks every channel with a subscription --rate times a second."""
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate
        data = json.dumps("." * self.size)
        due = loop.time()
        while True:
            due += period
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                due = loop.time()  # stalled for over a second: do not burst to catch up
            frames: dict[str, bytes] = {}
            for ch in self.channels.values():
                if not ch.members:
                    continue
                ch.seq += 1
                if self.skip_ratio > 0 and self.rng.random() < self.skip_ratio:
                    ch.skipped += 1
                    self.report({"skip": {"channel": ch.name, "seq": ch.seq}})
                    continue
                message = f'{{"channel":{ch.name_json},"seq":{ch.seq},"data":{data}}}'
                frames[ch.name] = text_frame(message.encode())
                ch.sent = ch.seq
            if frames:
                self.write_frames(frames)

    def write_frames(self, frames: dict[str, bytes]) -> None:
        """Writes to each connection, at once, the frames of the channels it receives."""
        for conn in self.conns.values():
            parts = [frames[name] for name in conn.receiving if name in frames]
            if parts and conn.ws.protocol.state is State.OPEN:
                conn.ws.transport.write(b"".join(parts))

    def subscribe(self, conn: Conn, name: str) -> dict[str, Any]:
        if name in conn.subs:
            if name in conn.silenced:
                self.unsilence(conn, name, "subscribe")
            return {"event": "subscribed", "channel": name}
        if self.max_channels is not None and len(conn.subs) >= self.max_channels:
            return {"event": "error", "channel": name, "code": "too_many_channels"}
        conn.subs[name] = None
        conn.receiving[name] = None
        self.channel(name).members.add(conn.id)
        return {"event": "subscribed", "channel": name}

    def unsubscribe(self, conn: Conn, name: str, how: str = "unsubscribe") -> None:
        if name not in conn.subs:
            return
        if name in conn.silenced:
            self.unsilence(conn, name, how)
        del conn.subs[name]
        conn.receiving.pop(name, None)
        self.channels[name].members.discard(conn.id)

    def unsilence(self, conn: Conn, name: str, how: str) -> None:
        since = conn.silenced.pop(name)
        after_ms = round((asyncio.get_running_loop().time() - since) * 1000)
        restore = {"conn": conn.id, "channel": name, "by": how, "after_ms": after_ms}
        self.report({"restore": restore})
        if how == "subscribe":
            conn.receiving[name] = None

    # -- connections -------------------------------------------------------------

    async def handler(self, ws: ServerConnection) -> None:
        conn = Conn(next(self.ids), ws)
        self.conns[conn.id] = conn
        self.accepted += 1
        try:
            async for raw in ws:
                reply = self.request(conn, raw)
                if reply is not None:
                    # Synchronous write, so an acknowledgement is ordered with the
                    # clock's writes exactly as the state changes are: no message of
                    # a channel before its "subscribed", none after "unsubscribed".
                    broadcast([ws], json.dumps(reply, separators=(",", ":")))
        except ConnectionClosed:
            pass
        finally:
            self.conns.pop(conn.id, None)
            for name in list(conn.subs):
                self.unsubscribe(conn, name, "closed")

    def request(self, conn: Conn, raw: str | bytes) -> dict[str, Any] | None:
        if isinstance(raw, bytes):
            return bad_request("binary messages are not understood")
        try:
            msg = json.loads(raw)
        except ValueError:
            return bad_request("not JSON")
        if not isinstance(msg, dict):
            return bad_request("not a JSON object")
        op = msg.get("op")
        if op == "ping":
            return {"op": "pong", "id": msg["id"]} if "id" in msg else {"op": "pong"}
        if op == "stats":
            return {"event": "stats", "conn": conn.id, **self.stats()}
        if op not in ("subscribe", "unsubscribe"):
            return bad_request(f"unknown op {op!r}")
        name = msg.get("channel")
        if not isinstance(name, str):
            return bad_request("channel must be a string")
        if op == "subscribe":
            return self.subscribe(conn, name)
        self.unsubscribe(conn, name)
        return {"event": "unsubscribed", "channel": name}

    # -- faults ------------------------------------------------------------------

    async def silencer(self, every: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            # Only a channel no other connection carries: while a rotation
            # overlaps two connections of one slot, the other one still
            # delivers the stream, so the client cannot see the silence
            # (and must not renew) until the overlap ends.
            live = [
                (conn, name)
                for conn in self.conns.values()
                for name in conn.subs
                if name not in conn.silenced and len(self.channels[name].members) == 1
            ]
            if not live:
                continue
            conn, name = self.rng.choice(live)
            conn.silenced[name] = loop.time()
            del conn.receiving[name]
            self.silences += 1
            self.report({"silence": {"conn": conn.id, "channel": name}})

    async def killer(self, ratio_per_minute: float) -> None:
        step = 0.1
        budget = 0.0
        while True:
            await asyncio.sleep(step)
            budget += ratio_per_minute * len(self.conns) * step / 60.0
            while budget >= 1.0 and self.conns:
                budget -= 1.0
                conn = self.conns.pop(self.rng.choice(list(self.conns)))
                self.kills += 1
                self.report({"kill": {"conn": conn.id}})
                conn.receiving.clear()
                conn.ws.transport.abort()
            if not self.conns:
                budget = 0.0

    def start(self) -> None:
        self.spawn(self.clock())
        if self.silence_every is not None:
            self.spawn(self.silencer(self.silence_every))
        if self.kill_ratio > 0:
            self.spawn(self.killer(self.kill_ratio))

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame (RFC 6455 section 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        header = bytes([0x81, n])
    elif n < 1 << 16:
        header = bytes([0x81, 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x81, 127]) + n.to_bytes(8, "big")
    return header + payload

def bad_request(message: str) -> dict[str, Any]:
    return {"event": "error", "code": "bad_request", "message": message}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: 0)")
    parser.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="exit when stdin is closed"
    )
    parser.add_argument(
        "--rate", type=float, default=10.0, help="messages per second per channel (default: 10)"
    )
    parser.add_argument(
        "--size", type=int, default=16, help="length of each message's data (default: 16)"
    )
    parser.add_argument("--max-channels", type=int, default=None, help="channels per connection")
    parser.add_argument("--skip-ratio", type=float, default=0.0, help="share of numbers skipped")
    parser.add_argument(
        "--silence-every", type=float, default=None, help="silence one subscription every SECS"
    )
    parser.add_argument(
        "--kill-ratio-per-minute",
        type=float,
        default=0.0,
        help="share of live connections dropped per minute",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the random choices")
    args = parser.parse_args()
    if not args.rate > 0:
        parser.error("--rate must be positive")
    if not 0.0 <= args.skip_ratio < 1.0:
        parser.error("--skip-ratio must be in [0, 1)")
    if args.silence_every is not None and not args.silence_every > 0:
        parser.error("--silence-every must be positive")
    if args.kill_ratio_per_minute < 0:
        parser.error("--kill-ratio-per-minute must not be negative")
    if args.max_channels is not None and args.max_channels < 0:
        parser.error("--max-channels must not be negative")
    return args


async def main() -> None:
    args = parse_args()
    feed = Feed(args)
    await serve_reporting(
        "feed_server",
        feed.handler,
        args.port,
        feed.command,
        args.exit_on_stdin_eof,
        started=feed.start,
    )


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass

