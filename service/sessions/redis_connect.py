"""Session-store URLs and the redis-py clients behind them.

Three topologies, told apart by the URL's scheme:

- ``redis://``, ``rediss://``, ``unix://``: one Redis (redis-py's URL form, with ``/db``).
- ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``: the primary
  that the Sentinel set at those addresses names for ``service``; a new connection asks
  the sentinels again, so after a failover the store writes to the new primary without a
  restart (``rediss+sentinel://`` for TLS to the data nodes).
- ``redis+cluster://[user:password@]host:port[,host:port...][/]``: a Redis Cluster, found
  from any of those nodes (``rediss+cluster://`` for TLS); redis-py's cluster client
  routes each command by its key's slot.

The user and password apply to the data nodes; sentinels are asked without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from service.sessions.redis_errors import no_maint_notifications

SCHEMES = ("redis://", "rediss://", "unix://")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
ALL_SCHEMES = SCHEMES + SENTINEL_SCHEMES + CLUSTER_SCHEMES


@dataclass(frozen=True)
class StoreUrl:
    """A parsed session-store URL (without its secrets in ``repr``)."""

    topology: str
    """``single``, ``sentinel`` or ``cluster``."""
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def __repr__(self) -> str:
        return f"StoreUrl({self.topology}, {list(self.hosts) or '<url>'})"


def _hosts(netloc: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for part in netloc.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {part!r}")
        hosts.append((host.strip("[]"), int(port)))
    return tuple(hosts)


def parse(url: str) -> StoreUrl:
    """The topology and addresses in ``url``; ``ValueError`` saying what is wrong."""
    if url.startswith(SCHEMES):
        return StoreUrl("single", url)
    if not url.startswith(SENTINEL_SCHEMES + CLUSTER_SCHEMES):
        raise ValueError("must be 'memory', a redis:// URL, redis+sentinel:// or redis+cluster://")
    scheme, rest = url.split("://", 1)
    creds, at, hostpart = rest.rpartition("@") if "@" in rest.split("/", 1)[0] else ("", "", rest)
    netloc, _, path = hostpart.partition("/")
    path = path.split("?", 1)[0]
    username = password = None
    if at:
        user, _, pw = creds.partition(":")
        username, password = unquote(user) or None, unquote(pw) or None
    hosts = _hosts(netloc)
    tls = scheme.startswith("rediss")
    parts = [p for p in path.split("/") if p]
    if scheme.endswith("+cluster"):
        if parts:
            raise ValueError("a Redis Cluster URL has no path (a cluster has one database)")
        return StoreUrl("cluster", url, hosts, username=username, password=password, tls=tls)
    if not parts or len(parts) > 2:
        raise ValueError("a Sentinel URL names the service: redis+sentinel://host:port/service")
    db = parts[1] if len(parts) == 2 else "0"
    if not db.isdigit():
        raise ValueError(f"database must be a number, got {db!r}")
    return StoreUrl(
        "sentinel",
        url,
        hosts,
        service=unquote(parts[0]),
        db=int(db),
        username=username,
        password=password,
        tls=tls,
    )


@dataclass
class Connected:
    client: aioredis.Redis | RedisCluster
    topology: str
    helpers: list[aioredis.Redis]
    """Clients the store must close with its own (Sentinel: one per sentinel)."""


def connect(
    url: str, *, socket_timeout: float, connect_timeout: float, max_connections: int
) -> Connected:
    """A client for ``url``, its topology and helper clients. Nothing is retried inside
    the client (one attempt per command: the session manager's offsets make a client's
    retry safe)."""
    where = parse(url)
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": max_connections,
    }
    if where.topology == "single":
        client = aioredis.Redis.from_url(
            url, health_check_interval=30, **common, **no_maint_notifications()
        )
        return Connected(client, "single", [])
    auth: dict[str, Any] = {"username": where.username, "password": where.password}
    if where.topology == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(where.hosts),
            sentinel_kwargs={
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": connect_timeout,
                "retry": Retry(NoBackoff(), 0),
            },
        )
        primary: aioredis.Redis = sentinel.master_for(
            where.service,
            db=where.db,
            ssl=where.tls,
            health_check_interval=30,
            **auth,
            **common,
        )
        return Connected(primary, "sentinel", list(sentinel.sentinels))
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in where.hosts],
        require_full_coverage=False,
        ssl=where.tls,
        **auth,
        **common,
        **no_maint_notifications(),
    )
    return Connected(cluster, "cluster", [])
