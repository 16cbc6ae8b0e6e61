"""The user data a launch sends when its region names a cloud-init file (the stock-Debian
path, before a golden image exists). EC2 takes at most 16 KB of user data before its
base64 encoding, which boto3 does itself; deploy/host/cloud-init.yaml is larger than that,
so it goes gzip-compressed, which cloud-init recognises and unpacks."""

import gzip
from functools import cache
from pathlib import Path

# EC2's limit on the raw (not yet base64-encoded) user data.
USER_DATA_LIMIT = 16 * 1024


class BadUserData(ValueError):
    pass


@cache
def compressed_user_data(path: Path) -> bytes:
    """The file's bytes gzip-compressed, the same bytes on every call and in every process
    (no timestamp in the header): a launch repeated with its ClientToken must send exactly
    the first request's parameters, or EC2 answers IdempotentParameterMismatch."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadUserData(f"user data file {str(path)!r}: {exc.strerror}") from None
    packed = gzip.compress(raw, compresslevel=9, mtime=0)
    if len(packed) > USER_DATA_LIMIT:
        raise BadUserData(
            f"user data file {str(path)!r} is {len(packed)} bytes gzip-compressed;"
            f" EC2 takes at most {USER_DATA_LIMIT}"
        )
    return packed
