"""S3 bundles: ``s3://bucket/path/{role}.tar.gz`` (or ``.zip``).

The key may contain ``{role}``; with several roles, each role's bundle is
extracted into the same tree in role order (later files win). The revision
is the object's VersionId when the bucket is versioned, else its ETag.
Downloads land in the cache under a temporary name and are renamed only
when complete, so a killed download never looks like a bundle.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pullboot.archive import extract
from pullboot.errors import ConfigError, SourceError, TransientSourceError
from pullboot.sources.base import Source, register

log = logging.getLogger(__name__)

_PERMANENT = {
    "NoSuchKey": "the bundle does not exist: check the key and {role} in the URL",
    "NoSuchBucket": "the bucket does not exist: check the bucket name",
    "AccessDenied": "allow s3:GetObject on the bundle in the instance role",
    "InvalidAccessKeyId": "the credentials are wrong: check the instance profile",
    "SignatureDoesNotMatch": "the credentials are wrong: check the instance profile",
    "404": "the bundle does not exist: check the key and {role} in the URL",
    "403": "allow s3:GetObject on the bundle in the instance role",
}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); ConfigError if either part is missing."""
    parts = urlsplit(url)
    key = parts.path.lstrip("/")
    if not parts.netloc or not key:
        raise ConfigError(f"S3 source {url!r} needs a bucket and a key",
                          hint="write it as s3://bucket/path/{role}.tar.gz")
    return parts.netloc, key


@register
class S3Source(Source):
    """Downloads one bundle per distinct key and extracts them in order."""

    kind = "s3"

    def keys(self) -> list[str]:
        _, template = parse_s3_url(self.spec.url)
        if "{role}" not in template:
            return [template]
        if not self.spec.roles:
            raise ConfigError(f"S3 key {template!r} uses {{role}} but no role is known",
                              hint="resolve a role first (--role, tag or user-data)")
        return list(dict.fromkeys(template.replace("{role}", r) for r in self.spec.roles))

    def fetch(self) -> str:
        from pullboot import aws

        bucket, _ = parse_s3_url(self.spec.url)
        s3 = aws.client("s3", region=self.spec.options.get("region"))
        revisions = [self._download(s3, bucket, key) for key in self.keys()]
        return "+".join(revisions)

    def export(self, dest: Path) -> None:
        for key in self.keys():
            extract(self._cached(key), dest, name=key)

    def _cached(self, key: str) -> Path:
        digest = hashlib.sha256(f"{self.spec.url}\0{key}".encode()).hexdigest()[:16]
        return self.cache_dir / f"{digest}.bundle"

    def _download(self, s3: Any, bucket: str, key: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        target = self._cached(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.part-{os.getpid()}")
        url = f"s3://{bucket}/{key}"
        try:
            resp = s3.get_object(Bucket=bucket, Key=key)
            with partial.open("wb") as out:
                for chunk in resp["Body"].iter_chunks(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            partial.replace(target)
        except ClientError as exc:
            partial.unlink(missing_ok=True)
            code = str(exc.response.get("Error", {}).get("Code", "?"))
            if code in _PERMANENT:
                raise SourceError(f"{url}: {code}", hint=_PERMANENT[code]) from None
            raise TransientSourceError(f"{url}: {code}", hint="S3 may be throttling or "
                                       "unavailable; it will be retried") from None
        except (BotoCoreError, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise TransientSourceError(f"{url} could not be downloaded: {exc}",
                                       hint="check the network path to S3") from None
        revision = resp.get("VersionId") or str(resp.get("ETag", "")).strip('"')
        log.info("s3 %s is %s", url, revision)
        return str(revision)
