"""A WebSocket server peer for wsfleet's integration tests (aiohttp).

Started by `wsfleet_testkit::AiohttpServer`; runnable by hand too:

    .venv/bin/python crates/wsfleet-testkit/py/aiohttp_server.py [--deflate] [--port N] MODE [ARGS]

The same command line, modes and output as ws_server.py beside it (see there):
echo, silent, close CODE [REASON], subprotocol NAME, headers. Binds 127.0.0.1,
prints `LISTENING <port>` on stdout, messages up to 64 MiB, no keepalive pings
from this side, permessage-deflate (aiohttp's `compress=True`) only with
--deflate, and with --exit-on-stdin-eof it exits when its stdin closes. A close
CODE is sent as given: aiohttp does not check it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading

from aiohttp import WSMsgType, web

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


async def echo(ws: web.WebSocketResponse) -> None:
    async for msg in ws:  # a close from the peer is answered by aiohttp (autoclose)
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type == WSMsgType.ERROR:
            logging.warning("connection error: %s", ws.exception())


def watch_stdin() -> None:
    def run() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            os._exit(0)

    threading.Thread(target=run, name="stdin-watch", daemon=True).start()


def make_handler(args: argparse.Namespace):
    async def handler(request: web.Request) -> web.StreamResponse:
        protocols: tuple[str, ...] = ()
        if args.mode == "subprotocol":
            offered = [
                p.strip()
                for value in request.headers.getall("Sec-WebSocket-Protocol", [])
                for p in value.split(",")
            ]
            if args.subprotocol not in offered:
                return web.Response(status=400, text=f"missing subprotocol {args.subprotocol}")
            protocols = (args.subprotocol,)
        ws = web.WebSocketResponse(
            protocols=protocols,
            compress=args.deflate,
            max_msg_size=MAX_SIZE,
            autoping=True,
            heartbeat=None,
        )
        await ws.prepare(request)

        if args.mode == "silent":
            request.transport.pause_reading()
            # Reading is paused, so even the peer's EOF goes unnoticed: park until killed.
            await asyncio.Event().wait()
        elif args.mode == "close":
            await ws.close(code=args.code, message=args.reason.encode())
        else:
            if args.mode == "headers":
                table: dict[str, str] = {}
                for name, value in request.raw_headers:
                    key = name.decode("latin-1").lower()
                    text = value.decode("latin-1")
                    table[key] = f"{table[key]}, {text}" if key in table else text
                table[":path"] = request.raw_path
                host, port = request.transport.get_extra_info("peername")[:2]
                table[":peer"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                await ws.send_str(json.dumps(table))
            await echo(ws)
        return ws

    return handler


async def main() -> None:
    args = parse_args()
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="aiohttp_server: %(levelname)s %(message)s",
    )
    if args.exit_on_stdin_eof:
        watch_stdin()

    app = web.Application()
    app.router.add_get("/{tail:.*}", make_handler(args))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = runner.addresses[0][1]
    print(f"LISTENING {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
