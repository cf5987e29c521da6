"""Named topics on Redis Streams: `BrokerService` publish/subscribe across processes and hosts.

`lazygrpc serve … --broker redis://HOST:PORT/DB`: a `Subscribe` on any server and a
`Publish` on any other server that reaches the same Redis meet in one stream. The rules are
the in-process broker's (docs/deployment.md, "Across hosts: the Redis broker"):

- **one subscriber per name**: `Subscribe` claims `{topic}:sub` (SET NX); a second one is
  refused, and `Publish` to a name nobody holds is NOT_FOUND;
- **one owner**: the claim carries an opaque `owner` string (BrokerService puts the
  subscriber's session and a digest of the topic's token there, docs/security.md); a
  publisher reads it with `holder()`, checks it, and publishes only while that same claim
  holds the name (the script compares it), so a publish checked against one subscriber
  never lands in a later one's topic;
- **bounded, with backpressure**: a topic is *full* when its unread entries reach
  `max_events`, or their bytes (each value's size + `ITEM_OVERHEAD`) would pass `max_bytes`;
  an empty topic always takes one. A full topic makes the publisher wait (the `Publish`
  call stops reading its stream, so the client's sends block) until the subscriber reads;
- **the subscriber trims what it read** (`XTRIM MINID`), so a stream's length is what is
  unread; `XADD … MAXLEN ~` is the hard bound should anything bypass the check;
- **a subscriber whose Redis connection breaks reconnects and resumes after the last id
  it handed out** (`XREAD BLOCK` from that id): nothing is lost or repeated;
- **a topic expires with its call**: the subscriber deletes its keys when `Subscribe` ends;
  they also carry a TTL the subscriber renews, should its server die first.

The check and the add are one Lua script, so concurrent publishers cannot overfill a topic.
Values travel as serialized `google.protobuf.Value`s, never pickles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2

from lazygrpc.broker.item import ITEM_OVERHEAD
from lazygrpc.broker.topic import DEFAULT_TOPIC_BYTES, DEFAULT_TOPIC_EVENTS

_log = logging.getLogger(__name__)

#: Milliseconds a subscriber's `XREAD` blocks (and so how often it renews its TTL).
BLOCK_MS = 1000
#: Milliseconds a topic's keys live unless its subscriber renews them.
TTL_MS = 30_000
#: Most values one script call adds (a publisher's batch).
BATCH = 64

# KEYS: stream, sub, published bytes, read bytes, wait, space. ARGV: max_events, max_bytes,
# ttl, maxlen, the claim checked ('': any), then (nbytes, source, value) per item.
# Returns {added, status, space id}.
_PUBLISH = """
local holder = redis.call('GET', KEYS[2])
if not holder or (ARGV[5] ~= '' and holder ~= ARGV[5]) then return {0, 'nosub', ''} end
local n = redis.call('XLEN', KEYS[1])
local published = tonumber(redis.call('GET', KEYS[3]) or '0')
local unread = published - tonumber(redis.call('GET', KEYS[4]) or '0')
local max_events, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local added, status, space = 0, 'ok', ''
for i = 6, #ARGV, 3 do
  local size = tonumber(ARGV[i])
  if n > 0 and (n >= max_events or unread + size > max_bytes) then
    redis.call('SET', KEYS[5], '1', 'PX', ARGV[3])
    local last = redis.call('XREVRANGE', KEYS[6], '+', '-', 'COUNT', 1)
    status, space = 'full', '0-0'
    if #last > 0 then space = last[1][1] end
    break
  end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 's', ARGV[i + 1], 'v', ARGV[i + 2])
  n, unread, published, added = n + 1, unread + size, published + size, added + 1
end
if added > 0 then
  redis.call('SET', KEYS[3], published, 'PX', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return {added, status, space}
"""

# KEYS: as above. ARGV: the smallest id to keep, the bytes read in all (absolute, so that a
# retried mark cannot count twice), ttl. Wakes waiting publishers through the space stream.
_MARK = """
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[3])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
if redis.call('GETDEL', KEYS[5]) then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', '16', '*', 'x', '1')
  redis.call('PEXPIRE', KEYS[6], ARGV[3])
end
return 1
"""


class NoSubscriber(LookupError):
    """`publish` to a topic that no `Subscribe` holds (or no longer the one checked)."""


@dataclass(frozen=True)
class Holder:
    """The claim a subscriber holds a topic with, and the `owner` it gave `subscribe`."""

    claim: str
    owner: str

    @classmethod
    def parse(cls, value: bytes | str) -> Holder:
        text = value.decode() if isinstance(value, bytes) else value
        return cls(text, text.partition(" ")[2])


def _keys(name: str) -> list[str]:
    base = f"lazygrpc:topic:{{{name}}}"  # one hash tag: a cluster keeps a topic's keys together
    return [f"{base}:{part}" for part in ("stream", "sub", "pub", "read", "wait", "space")]


def _after(entry_id: bytes) -> str:
    """The smallest stream id greater than `entry_id` (`XTRIM MINID` keeps it and later)."""
    ms, _, seq = entry_id.decode().partition("-")
    return f"{ms}-{int(seq) + 1}"


class RedisTopics:
    """Named topics in the Redis at `url` (`redis://HOST:PORT/DB`), bounded like `Topic`s."""

    def __init__(
        self,
        url: str,
        *,
        max_events: int = DEFAULT_TOPIC_EVENTS,
        max_bytes: int = DEFAULT_TOPIC_BYTES,
        **_: Any,
    ) -> None:
        try:
            import redis.asyncio
        except ImportError:
            raise ValueError(
                "--broker redis:// needs the redis package: pip install 'lazygrpc[redis]'"
            ) from None
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"broker URL {url!r}: expected redis://HOST:PORT/DB")
        self.url = url
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.redis_api = redis.asyncio
        # No retries inside redis-py: a publish retried after a lost reply could add twice;
        # the subscriber retries itself, from the last id it handed out.
        self._client = redis.asyncio.Redis.from_url(url, retry=None)
        self._publish = self._client.register_script(_PUBLISH)
        self._mark = self._client.register_script(_MARK)

    async def check(self) -> None:
        """PING, or a `ConnectionError` naming the URL (a server checks at start)."""
        try:
            await self._client.ping()
        except (OSError, self.redis_api.RedisError) as exc:
            raise ConnectionError(f"cannot reach the Redis broker at {self.url}: {exc}") from None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def holder(self, name: str) -> Holder | None:
        """Who holds `name` now (None: no subscriber)."""
        value = await self._client.get(_keys(name)[1])
        return None if value is None else Holder.parse(value)

    async def publish(
        self, name: str, items: Sequence[tuple[str, struct_pb2.Value]], holder: Holder | None = None
    ) -> None:
        """Add `items` (source, value) in order; waits while the topic is full.
        `NoSubscriber` when no `Subscribe` holds `name`, or (given `holder`) another one."""
        keys = _keys(name)
        claim = "" if holder is None else holder.claim
        pending = [
            (v.ByteSize() + ITEM_OVERHEAD, source, v.SerializeToString()) for source, v in items
        ]
        while pending:
            batch = pending[:BATCH]
            args: list[Any] = [self.max_events, self.max_bytes, TTL_MS, 2 * self.max_events, claim]
            for item in batch:
                args.extend(item)
            added, status, space = await self._publish(keys=keys, args=args)
            del pending[: int(added)]
            if status == b"nosub":
                raise NoSubscriber(f"topic {name!r} has no subscriber")
            if status == b"full":
                # Woken by the subscriber's next read (an entry after `space`), or renewed.
                await self._client.xread({keys[5]: space}, count=1, block=BLOCK_MS)

    async def subscribe(self, name: str, owner: str = "") -> Subscription:
        """Claim `name` for one subscriber (`ValueError` when another holds it), recording
        `owner` (`holder()` reads it back); iterate `events()`, then `close()`, which
        expires the topic."""
        subscription = Subscription(self, name, owner)
        await subscription.claim()
        return subscription

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """What a broken or unreachable connection raises."""
        redis = self.redis_api
        return redis.ConnectionError, redis.TimeoutError, OSError


class Subscription:
    """One subscriber's hold on a topic: its own connection, the last id it handed out."""

    def __init__(self, topics: RedisTopics, name: str, owner: str = "") -> None:
        self.topics = topics
        self.name = name
        self.keys = _keys(name)
        claim = uuid.uuid4().hex
        self._token = f"{claim} {owner}"  # the claim's value: `Holder.parse` reads it
        # Its own connection (an XREAD BLOCK holds one), named so an operator can find it.
        self._client = topics.redis_api.Redis.from_url(
            topics.url, retry=None, client_name=f"lazygrpc-sub-{claim[:8]}"
        )
        self._mark = self._client.register_script(_MARK)
        self._last = b"0-0"
        self._read = 0

    async def claim(self) -> None:
        keys = self.keys
        try:
            if not await self._client.set(keys[1], self._token, nx=True, px=TTL_MS):
                raise ValueError(f"topic {self.name!r} is already subscribed")
            await self._client.delete(keys[0], *keys[2:])  # a dead subscriber's leftovers
        except BaseException:
            await self._client.aclose()
            raise

    async def events(self) -> AsyncGenerator[tuple[str, struct_pb2.Value], None]:
        """(source, value) as published, in order, through reconnects: after a broken
        connection the next read starts after the last id handed out."""
        count = max(1, self.topics.max_events // 4)
        while True:
            entries = await self._next(count)
            for entry_id, fields in entries:
                value = struct_pb2.Value.FromString(fields[b"v"])
                yield fields[b"s"].decode(), value
                self._last = entry_id
                self._read += value.ByteSize() + ITEM_OVERHEAD
            await self._mark_read()  # when idle, it renews the TTL

    async def _next(self, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        delay = 0.05
        while True:
            try:
                reply = await self._client.xread(
                    {self.keys[0]: self._last}, count=count, block=BLOCK_MS
                )
                return reply[0][1] if reply else []
            except self.topics.errors as exc:
                _log.warning("Redis broker subscriber: %s; reconnecting in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                with contextlib.suppress(*self.topics.errors):  # still ours: renew the claim
                    await self._client.set(self.keys[1], self._token, px=TTL_MS)

    async def _mark_read(self) -> None:
        """Trim what was read, record the bytes read and wake a waiting publisher; retried
        on a broken connection (until it lands, publishers see the topic fuller than it is)."""
        args = [_after(self._last), self._read, TTL_MS]
        while True:
            try:
                await self._mark(keys=self.keys, args=args, client=self._client)
                return
            except self.topics.errors as exc:
                _log.warning("Redis broker subscriber: %s; retrying the read mark", exc)
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        """The call ended: the topic's keys go now (else with their TTL)."""
        try:
            with contextlib.suppress(*self.topics.errors):
                await asyncio.shield(self._client.delete(*self.keys))
        finally:
            await self._client.aclose()
