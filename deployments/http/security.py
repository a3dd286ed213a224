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
client address for requests without a key), held in each ingress replica, so with N ingress replicas
a client gets at most N times the limit. Every path counts: open paths and requests with a missing or
wrong key against the client address, so key guessing is limited too.
A refused request gets 429 with `Retry-After` (whole seconds).

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
from pathlib import Path

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

    def __init__(self, app: ASGIApp, keys: KeyStore | None, limiter: RateLimiter | None) -> None:
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
            wait = self.limiter.acquire(identity)
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
