"""Session-store URLs: each documented form parses to its topology, a malformed one is
refused at start with a message naming what is wrong (``service.sessions.redis_connect``)."""

from __future__ import annotations

import pydantic
import pytest

from service.sessions.redis_connect import parse
from service.settings import Settings


@pytest.mark.parametrize(
    ("url", "topology", "hosts", "service", "db"),
    [
        ("redis://r:6379/2", "single", (), "", 0),
        ("unix:///run/redis.sock", "single", (), "", 0),
        ("redis+cluster://a:7000,b:7001", "cluster", (("a", 7000), ("b", 7001)), "", 0),
        ("rediss+cluster://u:p@a:7000/", "cluster", (("a", 7000),), "", 0),
        ("redis+sentinel://s1:26379,s2:26379/mymaster", "sentinel",
         (("s1", 26379), ("s2", 26379)), "mymaster", 0),
        ("redis+sentinel://:secret@s1:26379/mymaster/3", "sentinel",
         (("s1", 26379),), "mymaster", 3),
    ],
)  # fmt: skip
def test_documented_forms_parse(
    url: str, topology: str, hosts: tuple[tuple[str, int], ...], service: str, db: int
) -> None:
    got = parse(url)
    assert (got.topology, got.hosts, got.service, got.db) == (topology, hosts, service, db)
    assert Settings(session_store=url).session_store == url
    assert "secret" not in repr(got)


def test_credentials_are_read() -> None:
    got = parse("redis+sentinel://user:p%40ss@s1:26379/m")
    assert (got.username, got.password) == ("user", "p@ss")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://a:7000/0", "no path"),
        ("redis+cluster://a", "host:port"),
        ("redis+cluster://a:99999", "host:port"),
        ("redis+sentinel://s1:26379", "names the service"),
        ("redis+sentinel://s1:26379/m/x", "database must be a number"),
        ("postgres://x", "redis"),
    ],
)
def test_malformed_urls_are_refused_at_start(url: str, says: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        Settings(session_store=url)
    assert says in str(info.value)
