"""A lean WebSocket load generator for ``WS /v1/sessions/{id}/stream``.

Each connection is a bare asyncio protocol (uvloop when installed) that speaks just
enough RFC 6455 to run a benchmark: it sends a pre-built masked text frame (mask key
zero, so the payload goes as is), parses the server's unmasked replies, and sends the
next frame as soon as a reply arrives (``--depth`` frames in flight per socket). Python
websockets clients spend more CPU per message than the server does, which on a 2-core
machine would measure the client. Prints one ``BENCH {json}`` line like the wrk scripts.
Usage: ``python benchmarks/ws_load.py --port 8000 --sessions ids.txt --body body.json
--connections 64 --duration 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import time
from pathlib import Path
from typing import cast


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class Conn(asyncio.Protocol):
    def __init__(self, path: str, host: str, frame: bytes, depth: int, stats: Stats) -> None:
        self.path, self.host, self.frame, self.depth, self.stats = path, host, frame, depth, stats
        self.buf = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.sent: list[float] = []
        self.transport: asyncio.Transport | None = None
        self.running = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def start(self) -> None:
        assert self.transport is not None
        now = time.perf_counter()
        self.sent.extend([now] * self.depth)
        self.transport.write(self.frame * self.depth)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded.done():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(RuntimeError(head.decode(errors="replace")))
                return
            self.upgraded.set_result(None)
        buf = self.buf
        replies = 0
        at = 0
        while len(buf) - at >= 2:
            opcode = buf[at] & 0x0F
            n = buf[at + 1] & 0x7F
            hl = 2
            if n == 126:
                if len(buf) - at < 4:
                    break
                n = int.from_bytes(buf[at + 2 : at + 4], "big")
                hl = 4
            elif n == 127:
                if len(buf) - at < 10:
                    break
                n = int.from_bytes(buf[at + 2 : at + 10], "big")
                hl = 10
            if len(buf) - at < hl + n:
                break
            if opcode == 1:
                if buf[at + hl : at + hl + 9] == b'{"error":':
                    self.stats.errors += 1
                replies += 1
            elif opcode == 8:
                self.stats.errors += 1
                self.running = False
            at += hl + n
        if at:
            del buf[:at]
        if not replies:
            return
        now = time.perf_counter()
        stats = self.stats
        for _ in range(replies):
            sent = self.sent.pop(0)
            if stats.recording:
                stats.latencies.append(now - sent)
        if self.running and stats.running and self.transport is not None:
            self.sent.extend([now] * replies)
            self.transport.write(self.frame * replies)


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors = 0
        self.running = True
        self.recording = False


async def run(args: argparse.Namespace, ids: list[str], frame: bytes) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    stats = Stats()
    conns: list[Conn] = []
    for i in range(args.connections):
        path = f"/v1/sessions/{ids[i % len(ids)]}/stream"
        host = f"{args.host}:{args.port}"
        _, conn = await loop.create_connection(
            lambda path=path, host=host: Conn(path, host, frame, args.depth, stats),  # type: ignore[misc]
            args.host,
            args.port,
        )
        await conn.upgraded
        conns.append(conn)
    for conn in conns:
        conn.start()
    await asyncio.sleep(args.warmup)
    stats.recording = True
    started = time.perf_counter()
    await asyncio.sleep(args.duration)
    stats.recording = False
    elapsed = time.perf_counter() - started
    stats.running = False
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    lat = sorted(stats.latencies)
    n = len(lat)

    def pct(p: float) -> float:
        return lat[min(n - 1, int(p / 100 * n))] * 1e6 if n else 0.0

    return {
        "requests": n,
        "duration_us": elapsed * 1e6,
        "p50_us": pct(50),
        "p99_us": pct(99),
        "mean_us": (sum(lat) / n * 1e6) if n else 0.0,
        "errors": stats.errors,
        "non2xx": 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", required=True, help="file with one session id per line")
    parser.add_argument("--body", required=True, help="file with the step body (one frame)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--depth", type=int, default=1, help="frames in flight per socket")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    ids = [s for s in Path(args.sessions).read_text().split() if s]
    frame = text_frame(Path(args.body).read_bytes().strip())
    print("BENCH " + json.dumps(asyncio.run(run(args, ids, frame))), flush=True)


if __name__ == "__main__":
    main()
