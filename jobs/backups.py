"""The backup bucket, as the worker checks an upload: S3 says what it holds under a key
(its size, and the SHA-256 the host computed before uploading, kept as the object's
`sha256` metadata). A host copy is removed only once S3 holds exactly what the host
reported: a partial or wrong upload is never the only copy."""

from dataclasses import dataclass
from typing import Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from jobs.config import StepSettings


@dataclass(frozen=True)
class StoredObject:
    size: int
    sha256: str | None  # the metadata the upload carried, if any


# How long a host may use the link to download a backup it restores (`backup-download`).
DOWNLOAD_LINK_SECONDS = 600


class BackupStore(Protocol):
    def stored(self, bucket: str, key: str) -> StoredObject | None: ...

    def download_link(self, bucket: str, key: str) -> str: ...


class S3Backups:
    def __init__(self, settings: StepSettings) -> None:
        timeout = settings.aws_timeout_seconds
        config = Config(
            retries={"mode": "standard", "max_attempts": settings.ec2_max_retries},
            connect_timeout=timeout,
            read_timeout=timeout,
        )
        self._s3 = boto3.client("s3", endpoint_url=settings.aws_endpoint_url, config=config)

    def stored(self, bucket: str, key: str) -> StoredObject | None:
        try:
            head = self._s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return StoredObject(int(head["ContentLength"]), head.get("Metadata", {}).get("sha256"))

    def download_link(self, bucket: str, key: str) -> str:
        """A short-lived presigned GET of one backup, signed with the worker's own right to
        read backups: the hosts' role may upload backups but never read one, so a host
        fetches only the backup a replacement hands it, for a few minutes."""
        return str(
            self._s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": bucket, "Key": key},
                ExpiresIn=DOWNLOAD_LINK_SECONDS,
            )
        )
