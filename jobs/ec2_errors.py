"""EC2's errors by what they mean for a node. AWS answers a capacity blip, a quota and a
bad AMI with the same exception type; retrying them alike either holds every node past a
blip within seconds or wastes attempts (and launch tokens) on what can never succeed.
Codes from AWS's "Error codes for the Amazon EC2 API" page."""

from dataclasses import dataclass
from typing import Literal

from botocore.exceptions import ClientError

Ec2ErrorKind = Literal["capacity", "quota", "permanent", "gone", "throttled"]

# The region has no room for this type right now: it passes on its own.
CAPACITY = frozenset({
    "InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientCapacity",
    "InsufficientReservedInstanceCapacity", "InsufficientFreeAddressesInSubnet",
})  # fmt: skip
# The account's limits: they pass when instances end or the quota is raised.
QUOTA = frozenset({"InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded"})
# The request can never succeed as configured: an operator must change something.
PERMANENT = frozenset({
    "InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidAMIID.Unavailable",
    "UnauthorizedOperation", "AuthFailure", "OptInRequired", "Blocked", "Unsupported",
    "UnsupportedOperation", "InvalidParameter", "InvalidParameterValue",
    "InvalidParameterCombination", "MissingParameter", "IdempotentParameterMismatch",
    "InvalidKeyPair.NotFound", "InvalidSubnetID.NotFound", "InvalidGroup.NotFound",
    "InvalidInstanceType",
})  # fmt: skip
# The instance is not there: terminated long enough ago that EC2 forgot it.
GONE = frozenset({"InvalidInstanceID.NotFound"})

# EC2's token bucket for the call was empty ("Request throttling for the Amazon EC2 API"):
# botocore's standard retries backed off and retried it already; one still refused passes
# once the bucket refills, so the step waits and runs again, never held for it.
THROTTLED = frozenset({"RequestLimitExceeded"})

KINDS: tuple[tuple[frozenset[str], Ec2ErrorKind], ...] = (
    (CAPACITY, "capacity"), (QUOTA, "quota"), (PERMANENT, "permanent"), (GONE, "gone"),
    (THROTTLED, "throttled"),
)  # fmt: skip


@dataclass(frozen=True)
class Ec2Error:
    kind: Ec2ErrorKind
    code: str
    message: str

    def __str__(self) -> str:
        return f"EC2 {self.code}: {self.message}"


def is_throttled(exc: BaseException) -> bool:
    """EC2 still refused the call for its rate after botocore's retries."""
    error = classify(exc)
    return error is not None and error.kind == "throttled"


def classify(exc: BaseException) -> Ec2Error | None:
    """What the error means, or None for anything else (retried as any failure)."""
    if not isinstance(exc, ClientError):
        return None
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    for codes, kind in KINDS:
        if code in codes:
            return Ec2Error(kind, code, str(error.get("Message", ""))[:300])
    return None
