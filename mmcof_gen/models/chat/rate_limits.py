"""Rate limits of an endpoint: sliding one-minute windows of requests and tokens, one limiter per base URL,
shared by every role and client on it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

from mmcof_gen.models.chat.config import ChatModelConfig


class RateLimiter:
    """Sliding one-minute windows of requests and tokens, shared by every client of one endpoint.

    Thread-safe (a worker thread runs its own event loop), so waiting is an `asyncio.sleep` outside the lock.
    """

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None):
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._requests: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def _wait(self, now: float) -> float:
        while self._requests and now - self._requests[0] >= 60:
            self._requests.popleft()
        while self._tokens and now - self._tokens[0][0] >= 60:
            self._tokens.popleft()
        waits = [0.0]
        if self.requests_per_minute and len(self._requests) >= self.requests_per_minute:
            waits.append(60 - (now - self._requests[0]))
        if self.tokens_per_minute and sum(n for _, n in self._tokens) >= self.tokens_per_minute:
            waits.append(60 - (now - self._tokens[0][0]))
        return max(waits)

    async def acquire(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                wait = self._wait(now)
                if wait <= 0:
                    self._requests.append(now)
                    return
            await asyncio.sleep(wait)

    def record_tokens(self, tokens: int) -> None:
        with self._lock:
            self._tokens.append((time.monotonic(), tokens))


_LIMITERS: dict[str, RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def endpoint_limiter(config: ChatModelConfig) -> RateLimiter:
    """The one limiter of an endpoint (base URL), made by the first role that uses it."""
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(config.base_url)
        if limiter is None:
            limiter = _LIMITERS[config.base_url] = RateLimiter(config.requests_per_minute, config.tokens_per_minute)
        return limiter

