"""Access control of the ingress: API keys, token-bucket rate limits, the OpenAPI security scheme.

API keys (`Authorization: Bearer KEY`) come from an environment variable (`security.api_keys_env`,
entries separated by commas or whitespace) and/or a file (`security.api_keys_file`, one entry a line,
`#` comments). An entry is either a key (at least 16 characters) or `sha256:HEX`, the SHA-256 of a key,
so a key file need not hold any secret. Only SHA-256 digests are kept in memory; a presented key is
hashed and compared with every stored digest by `hmac.compare_digest` (constant time, no early exit).
The key file is re-read when its modification time changes (checked at most every few seconds), so
keys rotate without a redeploy. With keys configured, every path under /api/v1 needs one; `/`,
`/health`, `/docs` and `/openapi.json` stay open.

Rate limits are token buckets: `requests_per_s` sustained, `burst` at once, one bucket per key (per
client address for requests without a key). With `rate_limit.redis_url` (or `redis_url_env`) the buckets
live in Redis and every ingress replica takes its tokens there, in one Lua script run atomically by the
server (EVALSHA), on the server's clock, each bucket a hash that expires once it would be full again: the
limit holds across all replicas (`SharedRateLimiter`). Without Redis, each ingress replica holds its own
buckets in memory (`RateLimiter`), so with N ingress replicas a client gets at most N times the limit.
If Redis cannot be reached the limiter fails open by default: the replica limits with its own in-memory
buckets, sets the gauge `lensing_rate_limit_backend{backend="memory"}`, counts the switch in
`lensing_rate_limit_fallbacks` and logs one line, tries Redis again every `REDIS_RETRY_S` and logs one
line when it is back; with `rate_limit.fail_closed: true` it answers 503 (Retry-After) instead.
Every path counts: open paths and requests with a missing or wrong key against the client address, so
key guessing is limited too. A refused request gets 429 with `Retry-After` (whole seconds).

`python -m deployments.http.security new-key` prints a fresh key and the `sha256:` line for a key file;
`python -m deployments.http.security hash KEY` prints the line of an existing key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from ..settings import RateLimitSettings, SecuritySettings
from .codecs import json_response

logger = logging.getLogger("ray.serve")

MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 512
HASH_PREFIX = "sha256:"
RELOAD_CHECK_S = 5.0
PROTECTED_PREFIX = "/api/v1"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_entries(text: str, source: str) -> list[bytes]:
    """SHA-256 digests of the keys or `sha256:HEX` entries in `text` (comments and blanks skipped)."""
    digests = []
    for number, line in enumerate(text.splitlines(), 1):
        for entry in line.split("#", 1)[0].replace(",", " ").split():
            if entry.startswith(HASH_PREFIX):
                hex_digest = entry[len(HASH_PREFIX):]
                try:
                    raw = bytes.fromhex(hex_digest)
                except ValueError:
                    raw = b""
                if len(raw) != 32:
                    raise ValueError(f"{source} line {number}: {HASH_PREFIX} needs 64 hex digits")
                digests.append(raw)
            elif len(entry) < MIN_KEY_LENGTH:
                raise ValueError(f"{source} line {number}: keys must have at least {MIN_KEY_LENGTH} characters")
            else:
                digests.append(digest(entry))
    return digests


class KeyStore:
    """The configured API keys as SHA-256 digests; `identify` a presented key in constant time."""

    def __init__(self, settings: SecuritySettings) -> None:
        self.env, self.file = settings.api_keys_env, settings.api_keys_file
        self.path = Path(self.file).expanduser() if self.file else None
        self._env_digests = parse_entries(os.environ.get(self.env, ""), f"${self.env}") if self.env else []
        self._file_digests: list[bytes] = []
        self._mtime: float | None = None
        self._checked = 0.0
        if self.path is not None:
            self._load_file()
        if settings.require_api_keys and not self.digests:
            sources = " or ".join(filter(None, (self.env and f"${self.env}", self.file)))
            raise RuntimeError(f"security.require_api_keys is set but {sources} holds no API key")
        if (self.env or self.file) and not self.digests:
            sources = " and ".join(filter(None, (self.env and f"${self.env}", self.file and f"file {self.file}")))
            logger.info("API keys off: %s holds no key, so /api/v1 answers without one (set a key there to "
                        "require keys; security.require_api_keys makes a missing key fatal)", sources)

    @property
    def digests(self) -> list[bytes]:
        return self._env_digests + self._file_digests

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def _load_file(self) -> None:
        assert self.path is not None
        try:
            mtime = self.path.stat().st_mtime
            text = self.path.read_text()
        except OSError as exc:  # fails the replica's start; at a reload the old keys stay
            raise RuntimeError(f"security.api_keys_file {self.path} cannot be read: {exc.strerror}") from None
        self._file_digests = parse_entries(text, str(self.path))
        self._mtime = mtime

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            if self.path.stat().st_mtime != self._mtime:
                self._load_file()
                logger.info("API key file %s reloaded: %d keys", self.path, len(self.digests))
        except (OSError, RuntimeError, ValueError) as exc:  # keep the keys we have
            logger.error("API key file %s not reloaded: %s", self.path, exc)

    def identify(self, key: str | None) -> str | None:
        """A short id of the matching key (its digest's first 12 hex digits), or None."""
        self._maybe_reload()
        if not key or len(key) > MAX_KEY_LENGTH:
            return None
        presented = digest(key)
        match = None
        for stored in self.digests:
            if hmac.compare_digest(presented, stored):
                match = stored
        return match.hex()[:12] if match is not None else None


class TokenBucket:
    """`rate` tokens a second up to `burst`; a request takes one."""

    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst, self.tokens, self.updated = rate, burst, float(burst), now

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one will be there."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """Token buckets by client identity; least recently seen buckets are dropped past `max_clients`."""

    def __init__(self, settings: RateLimitSettings, clock=time.monotonic) -> None:
        self.rate, self.burst, self.max_clients = settings.requests_per_s, settings.burst, settings.max_clients
        self.clock = clock
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def acquire(self, identity: str) -> float:
        """0 if the request may go ahead, else its Retry-After in seconds (> 0)."""
        now = self.clock()
        bucket = self.buckets.get(identity)
        if bucket is None:
            bucket = self.buckets[identity] = TokenBucket(self.rate, self.burst, now)
            while len(self.buckets) > self.max_clients:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(identity)
        return bucket.take(now)

    async def check(self, identity: str) -> float:
        """`acquire`, as `AccessControl` calls every limiter."""
        return self.acquire(identity)


class RateLimitUnavailable(RuntimeError):
    """The shared limit cannot be checked (Redis unreachable) and the limiter fails closed (503)."""


# The token bucket of TokenBucket.take, atomically in Redis, on the server's clock (so replicas agree).
# KEYS[1] the bucket; ARGV rate (tokens/s), burst, TTL (ms). Returns the wait in seconds as text (Lua
# numbers become integers on the way out). The hash expires once the bucket would be full again.
TOKEN_BUCKET_LUA = """
local rate, burst, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens, updated = tonumber(state[1]), tonumber(state[2])
if tokens == nil or updated == nil then
  tokens, updated = burst, now
end
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('PEXPIRE', KEYS[1], ttl)
return tostring(wait)
"""
KEY_PREFIX = "lensing:rate:"
REDIS_TIMEOUT_S = 0.25  # a Redis call slower than this counts as Redis being down (the request goes on)
REDIS_RETRY_S = 2.0  # while Redis is down, try it again this often


class SharedRateLimiter:
    """Token buckets in Redis, shared by every ingress replica; fails open to this replica's in-memory
    buckets (or closed: `RateLimitUnavailable`) while Redis cannot be reached (module docstring)."""

    def __init__(self, settings: RateLimitSettings, url: str | None, metrics: Any = None,
                 clock: Callable[[], float] = time.monotonic, timeout_s: float = REDIS_TIMEOUT_S) -> None:
        self.rate, self.burst, self.fail_closed = settings.requests_per_s, settings.burst, settings.fail_closed
        self.timeout_s = timeout_s
        self.url, self.metrics, self.clock = url, metrics, clock
        self.memory = RateLimiter(settings, clock)
        self.ttl_ms = math.ceil(1000 * (self.burst / self.rate + 1))
        self.backend = "redis" if url else "memory"
        self._retry_at = 0.0
        self._script: Any = None
        if metrics is not None:
            metrics.backend(self.backend)

    def _take_script(self) -> Any:
        """The registered script, on a client created in the running event loop (redis.asyncio binds to it)."""
        if self._script is None:
            assert self.url is not None
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            client = redis.asyncio.Redis.from_url(self.url, socket_timeout=self.timeout_s,  # no retries: a
                                                  socket_connect_timeout=self.timeout_s,  # failure falls back
                                                  retry=Retry(NoBackoff(), 0))
            self._script = client.register_script(TOKEN_BUCKET_LUA)
        return self._script

    async def check(self, identity: str) -> float:
        """0 if the request may go ahead, else its Retry-After in seconds; RateLimitUnavailable when failing closed."""
        if self.url is not None and self.clock() >= self._retry_at:
            from redis.exceptions import RedisError

            try:
                wait = await self._take_script()(keys=[KEY_PREFIX + identity],
                                                 args=[repr(self.rate), self.burst, self.ttl_ms])
            except (RedisError, OSError) as exc:
                self._retry_at = self.clock() + REDIS_RETRY_S
                self._switch("memory", exc)
            else:
                self._switch("redis")
                return float(wait)
        if self.url is not None and self.fail_closed:
            raise RateLimitUnavailable("the shared rate limit cannot be checked (Redis unreachable); retry shortly")
        return self.memory.acquire(identity)

    def _switch(self, backend: str, cause: BaseException | None = None) -> None:
        if backend == self.backend:
            return
        self.backend = backend
        if self.metrics is not None:
            self.metrics.backend(backend, fallback=backend == "memory")
        if backend == "memory":
            then = "answers 503" if self.fail_closed else "limits with this replica's own buckets"
            logger.warning("rate limits: Redis unreachable (%s); %s until it is back",
                           f"{type(cause).__name__}: {cause}".splitlines()[0], then)
        else:
            logger.info("rate limits: Redis reachable again; buckets are shared by all ingress replicas")


def rate_limiter(settings: RateLimitSettings, environ: Mapping[str, str] = os.environ,
                 metrics: Callable[[], Any] | None = None) -> RateLimiter | SharedRateLimiter:
    """The limiter the settings ask for: in Redis when a URL is given (or its variable is set), else in memory.

    An unset `redis_url_env` fails the start when the limiter fails closed, and limits per replica (with a
    log line) otherwise."""
    url = settings.redis_url
    if settings.redis_url_env:
        url = environ.get(settings.redis_url_env, "").strip() or None
        if url is None:
            if settings.fail_closed:
                raise RuntimeError(f"rate_limit.fail_closed is set but ${settings.redis_url_env} (the Redis URL) "
                                   "is not set")
            logger.warning("rate limits: $%s (the Redis URL) is not set; each ingress replica limits alone",
                           settings.redis_url_env)
        elif not url.startswith(("redis://", "rediss://", "unix://")):
            raise RuntimeError(f"${settings.redis_url_env} must hold a redis://, rediss:// or unix:// URL")
    if url is None:
        return RateLimiter(settings)
    return SharedRateLimiter(settings, url, metrics() if metrics is not None else None)


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def is_protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


class AccessControl:
    """401 without a valid key on /api/v1 (when keys are configured), 429 past the rate limit."""

    def __init__(self, app: ASGIApp, keys: KeyStore | None, limiter: RateLimiter | SharedRateLimiter | None) -> None:
        self.app, self.keys, self.limiter = app, keys, limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        key_id = None
        refused = False
        if self.keys is not None and is_protected(scope["path"]):
            key_id = self.keys.identify(bearer_token(scope))
            refused = key_id is None
        if self.limiter is not None:  # a refused key counts against the client address (guessing is limited too)
            client = scope.get("client")
            identity = f"key:{key_id}" if key_id else f"addr:{client[0] if client else 'unknown'}"
            try:
                wait = await self.limiter.check(identity)
            except RateLimitUnavailable as exc:
                response = json_response({"detail": str(exc)}, 503, headers={"Retry-After": str(math.ceil(
                    REDIS_RETRY_S))})
                return await response(scope, receive, send)
            if wait > 0:
                response = json_response({"detail": "rate limit exceeded; retry later"}, 429,
                                         headers={"Retry-After": str(max(1, math.ceil(wait)))})
                return await response(scope, receive, send)
        if refused:
            response = json_response({"detail": "missing or invalid API key (Authorization: Bearer KEY)"}, 401,
                                     headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


def document(schema: dict, keys: bool, limited: bool) -> dict:
    """Add the bearer scheme and 401 to the /api/v1 operations, 429 to all, of an OpenAPI document (in place)."""
    error = {"$ref": "#/components/schemas/Error"}
    if keys:
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http", "scheme": "bearer", "description": "an API key: Authorization: Bearer KEY"}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if keys and is_protected(path):
                operation["security"] = [{"bearer": []}]
                responses["401"] = {"description": "missing or invalid API key",
                                    "content": {"application/json": {"schema": error}}}
            if limited:
                responses["429"] = {"description": "rate limit exceeded",
                                    "headers": {"Retry-After": {"schema": {"type": "integer"},
                                                                "description": "seconds to wait"}},
                                    "content": {"application/json": {"schema": error}}}
    return schema


def main(argv: list[str]) -> int:
    if argv[:1] == ["new-key"] and len(argv) == 1:
        key = secrets.token_urlsafe(32)
        print(f"key:       {key}\nkey file:  {HASH_PREFIX}{digest(key).hex()}")
        return 0
    if argv[:1] == ["hash"] and len(argv) == 2:
        print(f"{HASH_PREFIX}{digest(argv[1]).hex()}")
        return 0
    print("usage: python -m deployments.http.security new-key | hash KEY", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
