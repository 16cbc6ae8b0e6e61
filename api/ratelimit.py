"""Rate limiting per subject, shared by every API process.

The counts live in a shared store (the fleet's Redis; FLEET_API_RATE_LIMIT_STORAGE), kept
by the `limits` library's moving window, so N replicas allow a subject the rate once, not N
times. One window: burst requests in the time the per-minute rate takes to earn that many
(120 a minute with a burst of 30: 30 in any 15 s). So a subject may send burst at once, and
per_minute a minute in the long run, as the token bucket this replaces allowed.
"""

import math
import time

from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

__all__ = ["RateLimiter", "StorageError"]


class RateLimiter:
    def __init__(self, storage_url: str, per_minute: int, burst: int, key_prefix: str) -> None:
        # wrap_exceptions: a store that does not answer raises StorageError, answered 503.
        storage = storage_from_string(storage_url, key_prefix=key_prefix, wrap_exceptions=True)
        self.windows = MovingWindowRateLimiter(storage)
        self.window = RateLimitItemPerSecond(burst, max(1, math.ceil(burst * 60 / per_minute)))

    def take(self, subject: str) -> float:
        """Count one request: 0 if granted, else the seconds until one would be."""
        if self.windows.hit(self.window, subject):
            return 0.0
        reset = self.windows.get_window_stats(self.window, subject).reset_time
        return max(0.0, reset - time.time())
