"""
Where a Redis store URL points, and redis-py's own clients for it.

Three kinds of store URL, told apart by the scheme:

* ``redis://``, ``rediss://``, ``unix://``: one Redis server, as redis-py
  and Django's ``RedisCache`` read them.
* ``redis+cluster://[user:password@]host:port[,host:port...][/0][?options]``
  (``rediss+cluster://`` for TLS): a Redis Cluster, reached through
  ``redis.cluster.RedisCluster``; the nodes listed are the startup nodes
  (one is enough, the client discovers the others), port 6379 by default.
  A cluster has database 0 only.
* ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db][?options]``
  (``rediss+sentinel://``): the primary that the Redis Sentinels listed
  watch under ``service`` (their ``mymaster``), reached through
  ``redis.sentinel.Sentinel.master_for()``; port 26379 by default. The
  scheme and layout are those of the Redis-Sentinel-Url package, which
  redisvl and prefect-redis read too (Celery's ``sentinel://`` puts the
  service name in its transport options instead).

Credentials and query options apply to the data nodes, as in a
``redis://`` URL; the Sentinels get the same timeouts, no credentials.
Each URL is checked as a plain ``redis://`` URL of its first node, so
every option means what it means to redis-py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import unquote, urlsplit

from patchboard._breaker._store import StoreKind

RedisKind: TypeAlias = Literal["redis", "redis_cluster", "redis_sentinel"]

KIND_NAMES: Final[dict[StoreKind, str]] = {
    "memory": "memory",
    "redis": "Redis",
    "redis_cluster": "Redis Cluster",
    "redis_sentinel": "Redis Sentinel",
}
"""How messages and the status page name each kind."""
_DEFAULT_PORTS: Final[dict[RedisKind, int]] = {"redis_cluster": 6379, "redis_sentinel": 26379}


def store_kind(url: str) -> RedisKind:
    """The kind of store the Redis URL ``url`` names, by its scheme (one of
    ``REDIS_URL_PREFIXES``: ``+cluster``, ``+sentinel``, or one server)."""
    scheme = url.partition("://")[0]
    if scheme.endswith("+cluster"):
        return "redis_cluster"
    if scheme.endswith("+sentinel"):
        return "redis_sentinel"
    return "redis"


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """A store URL, read: what to connect to, and how."""

    kind: RedisKind
    url: str
    """A plain redis-py URL: the server's, or the first node's (credentials, db, options)."""
    nodes: tuple[tuple[str, int], ...] = ()
    """The cluster's startup nodes, or the Sentinels; empty for one server."""
    service: str = ""
    """The Sentinels' name for the primary."""

    @classmethod
    def parse(cls, url: str) -> Topology:
        """
        Read ``url`` without connecting.

        Raises:
            ValueError: a node list that is empty or has a bad port, a
                Sentinel URL without its service name, a cluster URL with a
                database other than 0; the message says which.
        """
        kind = store_kind(url)
        if kind == "redis":
            return cls(kind=kind, url=url)
        scheme, _, rest = url.partition("://")
        netloc, slash, tail = rest.partition("/")
        path, mark, query = tail.partition("?")
        if not slash:  # no path: the query, if any, follows the nodes
            netloc, mark, query = netloc.partition("?")
        userinfo, at, hosts = netloc.rpartition("@")
        nodes = tuple(_node(node, _DEFAULT_PORTS[kind]) for node in hosts.split(","))
        segments = [unquote(segment) for segment in path.split("/") if segment]
        service = ""
        if kind == "redis_sentinel":
            if not segments:
                raise ValueError("the service name (the path: /mymaster/0) is missing")
            service, *segments = segments
        if len(segments) > 1:
            raise ValueError(f"the path has a part too many: {path!r}")
        database = segments[0] if segments else "0"
        if kind == "redis_cluster" and database != "0":
            raise ValueError(f"a cluster has database 0 only, got {database!r}")
        host, port = nodes[0]
        host = f"[{host}]" if ":" in host else host
        plain = scheme.partition("+")[0]
        first = f"{plain}://{userinfo}{at}{host}:{port}/{database}{mark}{query}"
        return cls(kind=kind, url=first, nodes=nodes, service=service)

    def sync_client(self, options: dict[str, Any]) -> Any:
        """
        A sync client (``redis.Redis`` or ``redis.cluster.RedisCluster``) with
        ``options`` (timeouts, retry, pool bound) unless the URL sets them;
        closing it closes its connections.
        """
        import redis

        if self.kind == "redis_cluster":
            from redis.cluster import ClusterNode, RedisCluster

            retry = options.pop("retry")  # the cluster's retries, not its connections'
            options.pop("driver_info")
            return RedisCluster(
                url=self.url,
                startup_nodes=[ClusterNode(host, port) for host, port in self.nodes[1:]],  # type: ignore[no-untyped-call]
                retry=retry,
                connection_pool_class=redis.BlockingConnectionPool,
                **options,  # under the URL's own options, which RedisCluster reads
            )
        if self.kind == "redis_sentinel":
            from redis.sentinel import Sentinel, SentinelConnectionPool

            class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
                """The Sentinel pool, waiting for a free connection as the others do."""

            sentinel = Sentinel(list(self.nodes), sentinel_kwargs=_sentinel_options(options))  # type: ignore[no-untyped-call]
            return sentinel.master_for(  # type: ignore[no-untyped-call]
                self.service,
                connection_pool_class=BlockingSentinelPool,
                **_primary_options(self.url, options),
            )
        return redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(self.url, **options))

    def async_client(self, options: dict[str, Any]) -> Any:
        """The asyncio twin of :meth:`sync_client`."""
        import redis.asyncio

        if self.kind == "redis_cluster":
            from redis.asyncio.cluster import ClusterNode, RedisCluster

            retry = options.pop("retry")
            for unsupported in ("driver_info", "timeout"):  # the async cluster has no such pool
                options.pop(unsupported)
            return RedisCluster.from_url(  # the URL's options win, as in from_url()
                self.url,
                startup_nodes=[ClusterNode(host, port) for host, port in self.nodes[1:]],
                retry=retry,
                **options,
            )
        if self.kind == "redis_sentinel":
            from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

            class BlockingSentinelPool(
                SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
            ):
                """The Sentinel pool, waiting for a free connection as the others do."""

            sentinel = Sentinel(list(self.nodes), sentinel_kwargs=_sentinel_options(options))  # type: ignore[no-untyped-call]
            return sentinel.master_for(
                self.service,
                connection_pool_class=BlockingSentinelPool,
                **_primary_options(self.url, options),
            )
        pool = redis.asyncio.BlockingConnectionPool.from_url(self.url, **options)
        return redis.asyncio.Redis.from_pool(pool)


def _node(node: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port``, as a pair."""
    parts = urlsplit(f"//{node}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"node {node!r}: the port must be a number in 1-65535") from None
    if not parts.hostname:
        raise ValueError(f"node {node!r}: a host is missing (host:port,host:port)")
    if port == 0:
        raise ValueError(f"node {node!r}: the port must be in 1-65535, got 0")
    return unquote(parts.hostname), port or default_port


def _primary_options(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """
    The Sentinel-watched primary's connection options: ``options`` under
    what the URL says (as ``from_url`` merges them), without its address
    (the Sentinels give it), TLS asked as the Sentinel pool asks for it.
    """
    from redis.connection import parse_url

    parsed = parse_url(url)  # type: ignore[no-untyped-call]  # redis leaves it untyped
    for address in ("host", "port"):
        parsed.pop(address, None)
    if parsed.pop("connection_class", None) is not None:  # rediss: an SSLConnection
        parsed["ssl"] = True
    return {**options, **parsed}


def _sentinel_options(options: dict[str, Any]) -> dict[str, Any]:
    """The Sentinels' connections: the data nodes' timeouts, nothing else."""
    return {key: options[key] for key in ("socket_timeout", "socket_connect_timeout")}
