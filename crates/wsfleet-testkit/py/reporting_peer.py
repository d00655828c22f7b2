"""What the reporting peers (feed_server.py, rate_server.py) share: serving
a handler on 127.0.0.1, printing `LISTENING PORT` for the Rust side, and
taking commands, one a line, on stdin."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from typing import Any, Callable

from websockets.asyncio.server import serve

# Largest message the peers take (they only read small control messages).
MAX_SIZE = 1 << 20


def watch_stdin(
    loop: asyncio.AbstractEventLoop, command: Callable[[str], Any], exit_on_eof: bool
) -> None:
    """Hands each stdin line to `command` on the loop; exits at EOF if asked."""

    def run() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(command, line)
        if exit_on_eof:
            os._exit(0)

    threading.Thread(target=run, name="stdin-commands", daemon=True).start()


async def serve_reporting(
    name: str,
    handler: Callable[..., Any],
    port: int,
    command: Callable[[str], Any],
    exit_on_eof: bool,
    started: Callable[[], Any] | None = None,
) -> None:
    """Serves `handler` until killed, after `LISTENING PORT` on stdout."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format=f"{name}: %(levelname)s %(message)s"
    )
    async with serve(
        handler,
        "127.0.0.1",
        port,
        max_size=MAX_SIZE,
        compression=None,
        ping_interval=None,
    ) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"LISTENING {bound}", flush=True)
        watch_stdin(asyncio.get_running_loop(), command, exit_on_eof)
        if started is not None:
            started()
        await server.serve_forever()
