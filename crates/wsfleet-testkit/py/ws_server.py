"""A WebSocket server peer for wsfleet's integration tests (Python `websockets`).

Started by `wsfleet_testkit::PyServer`; runnable by hand too:

    .venv/bin/python crates/wsfleet-testkit/py/ws_server.py [--deflate] [--port N] MODE [ARGS]

Modes (one per server; every connection gets the same treatment):

    echo                      echo every message back with the same type
    silent                    after the handshake stop reading entirely
                              (transport.pause_reading()): pings are never answered,
                              nothing is ever sent
    close CODE [REASON]       close right after the handshake with CODE and REASON;
                              a CODE that `websockets` refuses to send (1005, 999,
                              2000, ...) is written as a raw close frame instead
    subprotocol NAME          accept subprotocol NAME, then echo; a client that does not
                              offer NAME is refused with HTTP 400 (websockets' default)
    headers                   send one text message, a JSON object of the request
                              headers (names lowercased, repeats joined by ", ")
                              and the request target (path and query) as ":path"
                              and the client's address (IP:PORT) as ":peer",
                              then echo

Binds 127.0.0.1 (port 0 = the OS picks unless --port), then prints exactly one line
`LISTENING <port>` on stdout; everything else goes to stderr. Messages up to 64 MiB
(`max_size`), up to WEBSOCKETS_MAX_FRAGMENTS fragments per message (the test harness
raises websockets' default of 4096). No keepalive pings from this side. permessage-
deflate only with --deflate. With --exit-on-stdin-eof the server exits when its stdin
closes, so it never outlives the test process that started it, even after a SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import struct
import sys
import threading

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import EXTERNAL_CLOSE_CODES

MAX_SIZE = 64 * 1024 * 1024


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: 0)")
    parser.add_argument("--deflate", action="store_true", help="enable permessage-deflate")
    parser.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="exit when stdin is closed"
    )
    parser.add_argument("mode", choices=["echo", "silent", "close", "subprotocol", "headers"])
    parser.add_argument("args", nargs="*", help="mode arguments")
    args = parser.parse_args()
    if args.mode == "close":
        if not 1 <= len(args.args) <= 2 or not args.args[0].isdigit():
            parser.error("usage: close CODE [REASON]")
        args.code = int(args.args[0])
        args.reason = args.args[1] if len(args.args) == 2 else ""
        if args.code > 0xFFFF or len(args.reason.encode()) > 123:
            parser.error("close CODE must fit in u16 and REASON in 123 bytes")
    elif args.mode == "subprotocol":
        if len(args.args) != 1:
            parser.error("usage: subprotocol NAME")
        args.subprotocol = args.args[0]
    elif args.args:
        parser.error(f"mode {args.mode} takes no arguments")
    return args


async def echo(ws: ServerConnection) -> None:
    try:
        async for message in ws:  # str for text, bytes for binary: same type back
            await ws.send(message)
    except ConnectionClosed:
        pass


async def silent(ws: ServerConnection) -> None:
    ws.transport.pause_reading()
    # Reading is paused, so even the peer's EOF goes unnoticed: park until killed.
    await asyncio.Event().wait()


async def close(ws: ServerConnection, code: int, reason: str) -> None:
    if code in EXTERNAL_CLOSE_CODES or 3000 <= code < 5000:
        await ws.close(code, reason)
        return
    # websockets refuses to send this code: write the frame ourselves (server
    # frames are unmasked), then give the peer time to react and drop us.
    payload = struct.pack("!H", code) + reason.encode()
    ws.transport.write(bytes([0x88, len(payload)]) + payload)
    try:
        await asyncio.wait_for(ws.wait_closed(), timeout=10)
    except asyncio.TimeoutError:
        pass
    ws.transport.abort()


async def headers(ws: ServerConnection) -> None:
    table: dict[str, str] = {}
    for name, value in ws.request.headers.raw_items():
        key = name.lower()
        table[key] = f"{table[key]}, {value}" if key in table else value
    table[":path"] = ws.request.path
    table[":peer"] = peer_text(ws.remote_address)
    try:
        await ws.send(json.dumps(table))
    except ConnectionClosed:
        return
    await echo(ws)


def peer_text(address: tuple) -> str:
    """`IP:PORT` (`[IP]:PORT` for IPv6) of a socket's peer address tuple."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def watch_stdin() -> None:
    def run() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            os._exit(0)

    threading.Thread(target=run, name="stdin-watch", daemon=True).start()


async def main() -> None:
    args = parse_args()
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="ws_server: %(levelname)s %(message)s"
    )
    if args.exit_on_stdin_eof:
        watch_stdin()

    if args.mode == "echo" or args.mode == "subprotocol":
        handler = echo
    elif args.mode == "silent":
        handler = silent
    elif args.mode == "close":
        handler = lambda ws: close(ws, args.code, args.reason)  # noqa: E731
    else:
        handler = headers

    options = dict(
        max_size=MAX_SIZE,
        compression="deflate" if args.deflate else None,
        ping_interval=None,
    )
    if args.mode == "subprotocol":
        options["subprotocols"] = [args.subprotocol]

    async with serve(handler, "127.0.0.1", args.port, **options) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"LISTENING {port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
