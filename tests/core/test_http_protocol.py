"""The transport under the HTTP protocol: writes of one loop iteration leave as one."""

from __future__ import annotations

import asyncio
from typing import Any

from service.http.protocol import DIRECT_WRITE_BYTES, CoalescingTransport


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

    from service.http.protocol import ServeHttpProtocol
    from service.http.server import server_config

    config = server_config(FastAPI(), "127.0.0.1", 8000, 5)
    config.load()
    assert config.http_protocol_class is ServeHttpProtocol
    assert config.proxy_headers is False


class DirectApp:
    """An ASGI app that claims ``POST /direct/...`` as a direct route."""

    def __init__(self) -> None:
        self.asgi_paths: list[str] = []
        self.direct_paths: list[str] = []
        self.direct_scopes: list[dict[str, Any]] = []
        self.whole_bodies: list[str] = []
        """Direct requests whose body ``complete_body`` gave at once."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.asgi_paths.append(scope["path"])
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def direct_handler(self, scope: dict[str, Any]) -> Any:
        if not scope["path"].startswith("/direct/"):
            return None

        async def handle(scope: dict[str, Any], exchange: Any) -> None:
            self.direct_paths.append(scope["path"])
            self.direct_scopes.append(scope)
            if scope["path"] == "/direct/boom":
                raise RuntimeError("a bug")
            body = b"direct:"
            whole = exchange.complete_body()
            if whole is not None:
                self.whole_bodies.append(scope["path"])
                body += whole
            while whole is None:
                message = await exchange.receive()
                if message["type"] == "http.disconnect":
                    return
                body += message["body"]
                if not message["more_body"]:
                    break
            await exchange.respond(201, [(b"content-length", str(len(body)).encode())], body)

        return handle


class Socketish(Recording):
    def pause_reading(self) -> None:
        self.events.append("pause")

    def resume_reading(self) -> None:
        self.events.append("resume")


def _protocol(app: DirectApp, keep_alive: float = 5.0) -> tuple[Any, Socketish]:
    import uvicorn
    from uvicorn.server import ServerState

    from service.http.protocol import ServeHttpProtocol

    config = uvicorn.Config(app, proxy_headers=False, log_config=None)
    config.timeout_keep_alive = keep_alive  # type: ignore[assignment]  # typed int; any delay works
    config.load()
    state = ServerState()
    state.default_headers = [(b"server", b"test")]
    protocol = ServeHttpProtocol(config, state, {}, asyncio.get_running_loop())
    sock = Socketish()
    protocol.connection_made(sock)
    return protocol, sock


def _post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n" % (path.encode(), len(body))
    return head + extra + b"\r\n" + body


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_direct_routes_skip_asgi_and_the_rest_goes_through_it() -> None:
    app = DirectApp()
    protocol, sock = _protocol(app)
    protocol.data_received(_post("/direct/a", b"one"))
    await _settle()
    assert sock.writes == [
        b"HTTP/1.1 201 Created\r\nserver: test\r\ncontent-length: 10\r\n\r\ndirect:one"
    ]
    assert app.direct_paths == ["/direct/a"] and app.asgi_paths == []

    protocol.data_received(_post("/other", b"two"))
    await _settle()
    assert app.asgi_paths == ["/other"] and sock.writes[-1].endswith(b"\r\n\r\ntwo")

    # pipelined behind a direct request: answered in order, the second through ASGI
    protocol.data_received(_post("/direct/b", b"3") + _post("/direct/c", b"4"))
    await _settle()
    assert app.direct_paths == ["/direct/a", "/direct/b"]
    assert app.asgi_paths == ["/other", "/direct/c"]
    assert sock.writes[-2].endswith(b"direct:3") and sock.writes[-1].endswith(b"\r\n\r\n4")
    assert protocol.server_state.total_requests == 4 and not sock.closing
    # each direct body came in the same read as its head: taken whole, without receive
    assert app.whole_bodies == ["/direct/a", "/direct/b"]


async def test_a_direct_route_gets_the_path_and_query_as_uvicorn_parses_them() -> None:
    app = DirectApp()
    protocol, sock = _protocol(app)
    for target in ["/direct/a", "/direct/a?x=1&y", "/direct/a%20b?q=%20", "/direct/c#frag"]:
        protocol.data_received(_post(target, b"1"))
        await _settle()
    protocol.data_received(_post("http://t/direct/d?z=2", b"1"))  # absolute form
    await _settle()
    got = [(s["path"], s["raw_path"], s["query_string"]) for s in app.direct_scopes]
    assert got == [
        ("/direct/a", b"/direct/a", b""),
        ("/direct/a", b"/direct/a", b"x=1&y"),
        ("/direct/a b", b"/direct/a%20b", b"q=%20"),
        ("/direct/c", b"/direct/c", b""),
        ("/direct/d", b"/direct/d", b"z=2"),
    ]
    assert len(sock.writes) == 5 and app.asgi_paths == []


async def test_a_direct_route_waits_for_its_body_and_honours_connection_close() -> None:
    app = DirectApp()
    protocol, sock = _protocol(app)
    whole = _post("/direct/slow", b"late body", b"Connection: close\r\n")
    protocol.data_received(whole[:-4])
    await _settle()
    assert sock.writes == []  # waiting for the rest of the body
    protocol.data_received(whole[-4:])
    await _settle()
    assert sock.writes[0].endswith(b"connection: close\r\n\r\ndirect:late body")
    assert sock.events[-1] == "close"
    assert app.whole_bodies == []  # the body was still coming: read through receive


async def test_a_direct_route_answers_expect_100_continue_before_reading() -> None:
    app = DirectApp()
    protocol, sock = _protocol(app)
    request = _post("/direct/ask", b"body", b"Expect: 100-continue\r\n")
    protocol.data_received(request[:-4])  # the head: the client waits for 100 Continue
    await _settle()
    assert sock.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    protocol.data_received(request[-4:])
    await _settle()
    assert sock.writes[-1].endswith(b"\r\n\r\ndirect:body")
    assert app.whole_bodies == []  # complete_body leaves the interim reply to receive


async def test_a_failing_direct_route_answers_500_and_closes() -> None:
    app = DirectApp()
    protocol, sock = _protocol(app)
    protocol.data_received(_post("/direct/boom", b"x"))
    await _settle()
    assert sock.writes[0].startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"connection: close\r\n" in sock.writes[0] and sock.closing


async def test_nothing_is_written_for_a_client_gone_mid_body() -> None:
    app = DirectApp()
    protocol, sock = _protocol(app)
    protocol.data_received(_post("/direct/gone", b"never finished")[:-3])
    await _settle()
    protocol.connection_lost(None)
    await _settle()
    assert sock.writes == [] and protocol.tasks == set()


async def test_keep_alive_closes_a_connection_idle_for_the_timeout_with_one_timer() -> None:
    """The connection closes once idle for the whole keep-alive timeout, counted from its
    last response, and the timer armed after the first response serves the next ones."""
    app = DirectApp()
    protocol, sock = _protocol(app, keep_alive=0.5)
    protocol.data_received(_post("/direct/a", b"1"))
    await _settle()
    timer = protocol.timeout_keep_alive_task
    assert timer is not None
    for path in ["/direct/b", "/other", "/direct/c"]:  # busy before the timeout: kept open
        await asyncio.sleep(0.1)
        protocol.data_received(_post(path, b"1"))
        await _settle()
        assert not sock.closing and protocol.timeout_keep_alive_task is timer
    # 0.5 s in, the first timer finds the connection idle for 0.2 s only: it waits on
    await asyncio.sleep(0.25)
    assert not sock.closing and protocol.timeout_keep_alive_task is not timer
    await asyncio.sleep(0.4)  # now idle for more than 0.5 s
    assert sock.closing and len(sock.writes) == 4


async def test_keep_alive_never_closes_a_connection_mid_request() -> None:
    app = DirectApp()
    protocol, sock = _protocol(app, keep_alive=0.05)
    protocol.data_received(_post("/direct/a", b"1"))
    await _settle()
    protocol.data_received(_post("/direct/slow", b"late body")[:-4])  # a request begins
    await asyncio.sleep(0.15)
    assert not sock.closing and protocol.timeout_keep_alive_task is None
    protocol.data_received(b"body")
    await _settle()
    assert sock.writes[-1].endswith(b"direct:late body") and not sock.closing
    await asyncio.sleep(0.1)
    assert sock.closing


async def test_a_lost_connection_leaves_no_keep_alive_timer() -> None:
    protocol, _ = _protocol(DirectApp(), keep_alive=30)
    protocol.data_received(_post("/direct/a", b"1"))
    await _settle()
    timer = protocol.timeout_keep_alive_task
    protocol.connection_lost(None)
    assert timer is not None and timer.cancelled()
    assert protocol.timeout_keep_alive_task is None
