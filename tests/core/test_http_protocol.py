"""The transport under the HTTP protocol: writes of one loop iteration leave as one."""

from __future__ import annotations

import asyncio
from typing import Any

from service.http_protocol import DIRECT_WRITE_BYTES, CoalescingTransport


class Recording(asyncio.Transport):
    """Stands in for the socket's transport: keeps what reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.events.append("close")
        self.closing = True

    def abort(self) -> None:
        self.events.append("abort")
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def test_writes_of_one_iteration_leave_together_at_its_end() -> None:
    real = Recording()
    t = CoalescingTransport(real, asyncio.get_running_loop())
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"")
    t.write(bytearray(b'{"steps": 1}'))
    assert real.writes == [] and t.get_write_buffer_size() > 0
    await asyncio.sleep(0)
    assert real.writes == [b'HTTP/1.1 200 OK\r\n\r\n{"steps": 1}']
    t.write(b"next")
    await asyncio.sleep(0)
    assert real.writes[-1] == b"next" and len(real.writes) == 2
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)


async def test_close_flushes_first_abort_drops_and_order_holds_for_big_writes() -> None:
    real = Recording()
    t = CoalescingTransport(real, asyncio.get_running_loop())
    t.write(b"head")
    big = b"x" * DIRECT_WRITE_BYTES
    t.write(big)  # goes out at once, after what was held
    assert real.writes == [b"head", big]
    t.write(b"tail")
    t.close()
    assert real.writes[-1] == b"tail" and real.events == ["close"]
    await asyncio.sleep(0)  # the scheduled flush finds nothing left and a closing socket
    assert len(real.writes) == 3

    real2 = Recording()
    t2 = CoalescingTransport(real2, asyncio.get_running_loop())
    t2.write(b"never sent")
    t2.abort()
    await asyncio.sleep(0)
    assert real2.writes == [] and real2.events == ["abort"]


async def test_nothing_is_written_to_a_closing_socket() -> None:
    real = Recording()
    t = CoalescingTransport(real, asyncio.get_running_loop())
    t.write(b"late")
    real.closing = True  # the peer went away before the end of the iteration
    t.write(b"y" * DIRECT_WRITE_BYTES)
    await asyncio.sleep(0)
    assert real.writes == []


def test_the_server_runs_the_one_write_protocol() -> None:
    from fastapi import FastAPI

    from service.http_protocol import CoalescingHttpToolsProtocol
    from service.server import server_config

    config = server_config(FastAPI(), "127.0.0.1", 8000, 5)
    config.load()
    assert config.http_protocol_class is CoalescingHttpToolsProtocol
    assert config.proxy_headers is False
