#!/usr/bin/env python3
"""Reference Autobahn client: Python `websockets` (asyncio), echoing every case.

A stand-in for wsfleet's `examples/autobahn_client.rs`, to test scripts/autobahn end to
end and to compare verdicts with a mature implementation:

    scripts/autobahn --python-client            # or:
    AUTOBAHN_CLIENT_CMD='.venv/bin/python conformance/python_client.py' scripts/autobahn

Usage: python_client.py ws://127.0.0.1:PORT AGENT

Protocol (Autobahn fuzzingserver, as kosoku serves it): read the case count from
/getCaseCount, run /runCase?case=N&agent=AGENT for N in 1..=count echoing every message
with its type, then /updateReports?agent=AGENT, which makes kosoku write the report and exit.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

# websockets caps a message at 4096 fragments unless told otherwise (read at import):
# cases 9.3.x/9.4.x send 4 MiB in 64-byte fragments.
os.environ.setdefault("WEBSOCKETS_MAX_FRAGMENTS", str(1 << 20))

from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import WebSocketException  # noqa: E402

MAX_SIZE = 64 << 20


async def main(base: str, agent: str) -> int:
    base = base.rstrip("/")
    async with connect(f"{base}/getCaseCount") as ws:
        count = int(await ws.recv())
    print(f"python_client: {count} cases", file=sys.stderr)
    started = time.monotonic()
    for case in range(1, count + 1):
        try:
            async with connect(
                f"{base}/runCase?case={case}&agent={agent}",
                max_size=MAX_SIZE,
                ping_interval=None,
                open_timeout=30,
            ) as ws:
                async for message in ws:
                    await ws.send(message)
        except (WebSocketException, OSError, asyncio.TimeoutError):
            pass  # the verdict is kosoku's to give
        if case % 50 == 0 or case == count:
            print(
                f"python_client: {case}/{count} cases, {time.monotonic() - started:.0f} s",
                file=sys.stderr,
            )
    async with connect(f"{base}/updateReports?agent={agent}"):
        pass
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python_client.py ws://127.0.0.1:PORT AGENT")
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
