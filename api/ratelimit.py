"""Rate limiting per subject: a token bucket each, kept in this process's memory.

Several API processes each allow the full rate; a limit shared by all of them would need a
shared store (Postgres or Redis), which a front door of this size does not need yet.
"""

import threading
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        per_minute: float,
        burst: int,
        *,
        max_subjects: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_subjects = max_subjects
        self.clock = clock
        # subject -> (tokens, when counted); dict order is least recently seen first.
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, subject: str) -> float:
        """Take one token: 0 if granted, else the seconds until one is available."""
        with self._lock:
            now = self.clock()
            tokens, counted_at = self._buckets.pop(subject, (self.burst, now))
            tokens = min(self.burst, tokens + (now - counted_at) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[subject] = (tokens - 1 if wait == 0 else tokens, now)
            if len(self._buckets) > self.max_subjects:
                # Forgetting the longest-idle subject only gives it a full bucket back.
                del self._buckets[next(iter(self._buckets))]
            return wait
