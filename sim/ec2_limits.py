"""EC2's API throttling, as AWS documents it: token buckets per account and region.

Source: AWS, "Request throttling for the Amazon EC2 API",
https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html (the tables "Request
token bucket sizes and refill rates" and "Resource token bucket sizes and refill rates").

- Request rate limiting: every API action has its own bucket ("limits are applied to
  individual API actions, not API action categories"); its size and refill rate come from
  the action's category, or from the page's table of uncategorized actions. Each request
  takes one token.
- Resource rate limiting: RunInstances, TerminateInstances, StartInstances and
  StopInstances also take one token per instance from a second bucket of the action.
- Over either: `RequestLimitExceeded`.

The page's numbers used here (capacity / refill per second):
  non-mutating (Describe*, List*, Search*, Get*): 100 / 20;
  unfiltered and unpaginated non-mutating (DescribeInstances, DescribeInstanceStatus,
  DescribeNetworkInterfaces, DescribeSecurityGroups, DescribeSnapshots,
  DescribeSpotInstanceRequests, DescribeVolumes without a filter or pagination): 50 / 10;
  mutating (all others, StopInstances among them: the page lists no bucket of its own):
  50 / 5; uncategorized ones the fleet calls: RunInstances 5 / 2, StartInstances 5 / 2,
  TerminateInstances 100 / 5, CreateTags 100 / 10.
  Resources: RunInstances 1000 / 2, TerminateInstances 1000 / 20, StartInstances 1000 / 2,
  StopInstances 1000 / 20.

Where the simulator has to guess (the page does not say):
- A filter is `Filter.N`; pagination is MaxResults or NextToken. A DescribeInstances that
  only names InstanceIds is taken as unfiltered (the small bucket): the page names only
  filters and pagination as what moves a call to the standard bucket.
- RunInstances takes MaxCount resource tokens (the most it may launch); a call refused
  for its request or resource bucket takes no resource tokens. A call refused by the
  resource bucket has spent its request token (it was a request).
- Buckets refill continuously (rate x elapsed), where EC2 adds its tokens once a second.
- One account: the simulator's moto has one, so buckets are per region only."""

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class BucketSize:
    capacity: float
    refill_per_second: float


NON_MUTATING_PREFIXES = ("Describe", "List", "Search", "Get")
UNFILTERED_ACTIONS = frozenset({
    "DescribeInstances", "DescribeInstanceStatus", "DescribeNetworkInterfaces",
    "DescribeSecurityGroups", "DescribeSnapshots", "DescribeSpotInstanceRequests",
    "DescribeVolumes",
})  # fmt: skip
# The page's "uncategorized actions" that the fleet (or the simulator's own tools) calls.
UNCATEGORIZED: Mapping[str, BucketSize] = MappingProxyType({
    "RunInstances": BucketSize(5, 2),
    "StartInstances": BucketSize(5, 2),
    "TerminateInstances": BucketSize(100, 5),
    "CreateTags": BucketSize(100, 10),
    "DeleteTags": BucketSize(100, 10),
})  # fmt: skip
RESOURCES: Mapping[str, BucketSize] = MappingProxyType({
    "RunInstances": BucketSize(1000, 2),
    "TerminateInstances": BucketSize(1000, 20),
    "StartInstances": BucketSize(1000, 2),
    "StopInstances": BucketSize(1000, 20),
})  # fmt: skip


@dataclass(frozen=True)
class Ec2Limits:
    """The buckets' sizes and refill rates; the defaults are AWS's. `capacity_scale`
    multiplies every capacity (at least one token is left) and `refill_scale` every
    refill rate: tests make buckets small and quick to refill with them."""

    non_mutating: BucketSize = BucketSize(100, 20)
    unfiltered_non_mutating: BucketSize = BucketSize(50, 10)
    mutating: BucketSize = BucketSize(50, 5)
    actions: Mapping[str, BucketSize] = field(default_factory=lambda: UNCATEGORIZED)
    resources: Mapping[str, BucketSize] = field(default_factory=lambda: RESOURCES)
    capacity_scale: float = 1.0
    refill_scale: float = 1.0

    def request_bucket(self, action: str, form: Mapping[str, list[str]]) -> tuple[str, BucketSize]:
        """The request bucket a call takes its token from: its name and size."""
        if action in self.actions:
            return action, self._scaled(self.actions[action])
        if not action.startswith(NON_MUTATING_PREFIXES):
            return action, self._scaled(self.mutating)
        if action in UNFILTERED_ACTIONS and not _narrowed(form):
            return f"{action} (unfiltered)", self._scaled(self.unfiltered_non_mutating)
        return action, self._scaled(self.non_mutating)

    def resource_bucket(self, action: str) -> BucketSize | None:
        size = self.resources.get(action)
        return None if size is None else self._scaled(size)

    def _scaled(self, size: BucketSize) -> BucketSize:
        capacity = max(1.0, size.capacity * self.capacity_scale)
        return BucketSize(capacity, size.refill_per_second * self.refill_scale)


def _narrowed(form: Mapping[str, list[str]]) -> bool:
    """A filter or pagination: the call takes from the standard (larger) bucket."""
    return any(k.startswith("Filter.") or k in ("MaxResults", "NextToken") for k in form)


def resource_cost(action: str, form: Mapping[str, list[str]]) -> int:
    """Instances the call acts on: RunInstances' MaxCount, or the ids named."""
    if action == "RunInstances":
        try:
            return max(1, int(form.get("MaxCount", ["1"])[0]))
        except ValueError:
            return 1
    return sum(1 for k in form if k.startswith("InstanceId."))


class TokenBucket:
    def __init__(self, size: BucketSize, now: float) -> None:
        self.size = size
        self.tokens = size.capacity  # a bucket starts full, as an idle account's
        self.updated = now

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.size.capacity, self.tokens + elapsed * self.size.refill_per_second)
        self.updated = now

    def has(self, tokens: float) -> bool:
        return self.tokens >= tokens


class Ec2Throttle:
    """The buckets of every region, and what they refused. Thread-safe."""

    def __init__(self, limits: Ec2Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str, str], TokenBucket] = {}
        # (region, action) -> calls answered RequestLimitExceeded / let through
        self.refused: Counter[tuple[str, str]] = Counter()
        self.admitted: Counter[tuple[str, str]] = Counter()

    def admit(self, region: str, action: str, form: Mapping[str, list[str]]) -> bool:
        """Take the call's tokens, or refuse it (False) and take no resource tokens."""
        name, size = self.limits.request_bucket(action, form)
        with self._lock:
            now = self._clock()
            request = self._bucket(region, "request", name, size, now)
            if not request.has(1):
                self.refused[region, action] += 1
                return False
            request.tokens -= 1
            resource_size = self.limits.resource_bucket(action)
            if resource_size is not None:
                cost = resource_cost(action, form)
                resource = self._bucket(region, "resource", action, resource_size, now)
                if not resource.has(cost):
                    self.refused[region, action] += 1
                    return False
                resource.tokens -= cost
            self.admitted[region, action] += 1
            return True

    def refused_total(self, region: str | None = None, action: str | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (r, a), n in self.refused.items()
                if region in (None, r) and action in (None, a)
            )

    def admitted_total(self, region: str | None = None, action: str | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (r, a), n in self.admitted.items()
                if region in (None, r) and action in (None, a)
            )

    def summary(self) -> dict[str, dict[str, int]]:
        """The counters as JSON for a benchmark's details: "region Action" -> calls."""
        with self._lock:
            return {
                "refused": {f"{r} {a}": n for (r, a), n in sorted(self.refused.items())},
                "admitted": {f"{r} {a}": n for (r, a), n in sorted(self.admitted.items())},
            }

    def tokens(self, region: str, kind: str, bucket: str) -> float | None:
        """Tokens left in a bucket now (kind: request or resource), None if never used."""
        with self._lock:
            found = self._buckets.get((region, kind, bucket))
            if found is None:
                return None
            found.refill(self._clock())
            return found.tokens

    def _bucket(
        self, region: str, kind: str, name: str, size: BucketSize, now: float
    ) -> TokenBucket:
        bucket = self._buckets.get((region, kind, name))
        if bucket is None or bucket.size != size:
            bucket = self._buckets[region, kind, name] = TokenBucket(size, now)
        bucket.refill(now)
        return bucket


def credential_scope(authorization: str) -> tuple[str, str, str] | None:
    """(access key id, region, service) of a SigV4 Authorization header, or None."""
    marker = "Credential="
    start = authorization.find(marker)
    if start < 0:
        return None
    credential = authorization[start + len(marker) :].split(",", 1)[0].strip()
    parts = credential.split("/")
    if len(parts) < 5:
        return None
    return parts[0], parts[2], parts[3]
