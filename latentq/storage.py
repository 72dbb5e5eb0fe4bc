"""Image storage on any S3-compatible service, through boto3.

Object keys come from ``latentq.keys`` (server-made, never user input). URLs are made when a
client reads a job, so every read gets a fresh expiry.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.client import Config
from botocore.exceptions import BotoCoreError, ClientError

from latentq.settings import CommonSettings

#: Errors boto3 raises for a failed S3 call; callers map them to ``storage_error``.
STORAGE_ERRORS = (BotoCoreError, ClientError)
#: The CORS configuration of a bucket ``ensure_bucket`` creates: one origin that no page has
#: (``.invalid`` never resolves), so S3 lets no browser page read its answers. A rule is needed
#: because SeaweedFS, given none, echoes any ``Origin``; presigned URLs need no CORS.
BUCKET_CORS = {"CORSRules": [{"AllowedOrigins": ["http://cors-off.invalid"], "AllowedMethods": ["GET"]}]}


def _client(
    settings: CommonSettings, endpoint_url: str | None, attempts: int = 5, timeout_s: float = 30
) -> Any:
    secret = settings.s3_secret_access_key
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=Config(
            signature_version="s3v4",
            # Path-style addressing works with every S3-compatible server and bucket name.
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": attempts},
            connect_timeout=min(5, timeout_s),
            read_timeout=timeout_s,
        ),
    )


class ImageStore:
    """Puts images into one bucket and makes URLs for them."""

    def __init__(self, settings: CommonSettings) -> None:
        self.bucket = settings.s3_bucket
        self.public_base_url = (settings.s3_public_base_url or "").rstrip("/") or None
        self.url_expires_s = settings.s3_url_expires_s
        self.client = _client(settings, settings.s3_endpoint_url)
        presign_endpoint = settings.s3_presign_endpoint_url
        self.presign_client = _client(settings, presign_endpoint) if presign_endpoint else self.client
        # Health checks must answer fast: one attempt, short timeouts.
        self.probe_client = _client(settings, settings.s3_endpoint_url, attempts=1, timeout_s=2)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``."""
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``."""
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        with body:
            data: bytes = body.read()
        return data

    def delete(self, keys: list[str]) -> None:
        """Delete the objects under ``keys`` (missing ones are no error)."""
        if keys:
            objects = [{"Key": key} for key in keys]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})

    def url(self, key: str) -> str:
        """Return a URL that serves ``key`` over plain HTTP: public, or presigned for ``url_expires_s``."""
        if self.public_base_url:
            return f"{self.public_base_url}/{key}"
        return self.presign_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.url_expires_s
        )

    def check(self) -> None:
        """Raise a storage error unless the bucket is reachable with our credentials."""
        self.probe_client.head_bucket(Bucket=self.bucket)

    def ensure_bucket(self) -> None:
        """Create the bucket, with ``BUCKET_CORS``, if it does not exist yet (an existing bucket is
        left as it is)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                raise
            options: dict[str, Any] = {}
            if self.client.meta.region_name not in (None, "us-east-1"):
                options["CreateBucketConfiguration"] = {"LocationConstraint": self.client.meta.region_name}
            self.client.create_bucket(Bucket=self.bucket, **options)
            self.client.put_bucket_cors(Bucket=self.bucket, CORSConfiguration=BUCKET_CORS)
