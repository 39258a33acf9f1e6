"""S3 bundles: ``s3://bucket/path/{role}.tar.gz`` (or ``.zip``).

* The key may contain ``{role}``; with several roles, each role's bundle is
  extracted into the same tree in role order (later files win).
* Revision: the object's VersionId when the bucket is versioned, else its
  ETag. ``s3.version_id`` pins one version.
* A conditional GET on the cached ETag makes an unchanged bundle cost one
  request and no download (S3 answers 304).
* Deadlines: every call and the download end within the fetch's deadline
  (``fetch.retry_budget``, see :mod:`pullboot.fetch`), checked per chunk,
  and a transfer slower than :data:`MIN_RATE_BPS` over :data:`LOW_SPEED_S`
  seconds is abandoned (a transient error: retried, then the last good release).
* Integrity: sha256 from the object's own checksum (``x-amz-checksum-sha256``)
  or a ``<key>.sha256`` sidecar, and optionally a detached Ed25519 signature
  ``<key>.sig`` checked against ``s3.signature_keys``. A bundle is moved into
  the cache only once complete and verified; a failed check leaves the
  previous verified bundle where it was.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pullboot.atomic import read_json, write_json_atomic
from pullboot.errors import AuthError, ConfigError, IntegrityError, SourceError
from pullboot.errors import TransientSourceError as Transient
from pullboot.sources.base import Source, register

log = logging.getLogger(__name__)

# Like git's http.lowSpeedLimit/lowSpeedTime: below 1000 B/s for 30 s is stalled.
MIN_RATE_BPS = 1000
LOW_SPEED_S = 30.0
_CHUNK = 1 << 20
_SMALL_OBJECT_MAX = 1 << 16
_NOT_FOUND = {"NoSuchKey", "404", "NoSuchVersion"}
_AUTH = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch",
         "ExpiredToken", "InvalidToken"}
_PERMANENT_HINTS = {
    "NoSuchBucket": "the bucket does not exist: check the bucket name",
    "InvalidArgument": "check s3.version_id",
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
    """Downloads one bundle per distinct key, verifies it, extracts them in order."""

    kind = "s3"

    def opt(self, name: str) -> Any:
        return self.spec.options.get(f"s3.{name}")

    def keys(self) -> list[str]:
        _, template = parse_s3_url(self.spec.url)
        if "{role}" not in template:
            return [template]
        if not self.spec.roles:
            raise ConfigError(f"S3 key {template!r} uses {{role}} but no role is known",
                              hint="resolve a role first (--role, tag or user-data)")
        return list(dict.fromkeys(template.replace("{role}", r) for r in self.spec.roles))

    def fetch(self) -> str:
        bucket, _ = parse_s3_url(self.spec.url)
        s3 = self._client()
        return "+".join(self._fetch_one(s3, bucket, key) for key in self.keys())

    def remote_revision(self) -> str:
        bucket, _ = parse_s3_url(self.spec.url)
        s3 = self._client()
        revisions = []
        for key in self.keys():
            args = {"Bucket": bucket, "Key": key, **self._version_arg()}
            head = self._call(f"s3://{bucket}/{key}", lambda a=args: s3.head_object(**a))
            revisions.append(_revision(head))
        return "+".join(revisions)

    def export(self, dest: Path) -> None:
        from pullboot.archive import Limits, extract  # tarfile, zipfile: only for S3 bundles

        limits = Limits(max_bytes=self.opt("max_bytes") or Limits.max_bytes,
                        max_members=self.opt("max_members") or Limits.max_members)
        for key in self.keys():
            extract(self._cached(key), dest, name=key, limits=limits)

    # -- internals -------------------------------------------------------------

    def _client(self) -> Any:
        from pullboot import aws

        left = self.deadline.left()
        return aws.client("s3", region=self.spec.options.get("region"),
                          within=None if left == float("inf") else left)

    def _version_arg(self) -> dict[str, str]:
        pin = self.opt("version_id")
        return {"VersionId": pin} if pin else {}

    def _cached(self, key: str) -> Path:
        digest = hashlib.sha256(f"{self.spec.url}\0{key}".encode()).hexdigest()[:16]
        return self.cache_dir / f"{digest}.bundle"

    def _fetch_one(self, s3: Any, bucket: str, key: str) -> str:
        target = self._cached(key)
        meta_path = target.with_suffix(".json")
        meta = _read_meta(meta_path) if target.is_file() else None
        pin = self.opt("version_id")
        url = f"s3://{bucket}/{key}"
        if meta and pin and meta.get("version_id") == pin:
            # A pinned version never changes, but today's integrity settings apply.
            return self._reverify_cached(s3, bucket, key, target, meta)
        args: dict[str, Any] = {"Bucket": bucket, "Key": key, "ChecksumMode": "ENABLED",
                                **self._version_arg()}
        if meta and not pin and meta.get("etag"):
            args["IfNoneMatch"] = meta["etag"]
        resp = self._call(url, lambda: s3.get_object(**args), not_modified_ok=True)
        if resp is None:
            log.info("s3 %s unchanged (304); using the cached bundle", url)
            assert meta is not None
            return self._reverify_cached(s3, bucket, key, target, meta)
        partial = target.with_name(f"{target.name}.part-{os.getpid()}")
        try:
            digest = self._download(resp, partial, url)
            self._verify(s3, bucket, key, resp=resp, digest=digest, partial=partial)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        revision = _revision(resp)
        _write_meta(meta_path, {"etag": resp.get("ETag"), "version_id": resp.get("VersionId"),
                                "revision": revision, "key": key,
                                "checksum_sha256": resp.get("ChecksumSHA256"),
                                "sha256": digest.hexdigest()})
        log.info("s3 %s is %s", url, revision)
        return revision

    def _reverify_cached(self, s3: Any, bucket: str, key: str, target: Path,
                         meta: dict[str, Any]) -> str:
        """Check a cached bundle against the integrity settings in force now.

        The settings may have changed since it was downloaded (a key added,
        signatures made mandatory): a cache hit must not bypass them.
        """
        with target.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256")
        if meta.get("sha256") and meta["sha256"] != digest.hexdigest():
            raise IntegrityError(f"cached bundle {target} changed on disk since it was verified",
                                 hint="delete it; the next run downloads it again")
        # "auto" was satisfied at download time and the bytes are the same; a
        # stricter mode or signature keys are checked again now.
        self._verify(s3, bucket, key, resp={"ChecksumSHA256": meta.get("checksum_sha256")},
                     digest=digest, partial=target,
                     checksum=self.opt("checksum") == "required")
        return str(meta["revision"])

    def _download(self, resp: Any, partial: Path, url: str) -> hashlib._Hash:
        from botocore.exceptions import FlexibleChecksumError

        from pullboot import aws

        partial.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        try:
            with partial.open("wb") as out:
                for chunk in self._chunks(resp["Body"], url, resp.get("ContentLength")):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except FlexibleChecksumError as exc:
            # botocore checked x-amz-checksum-sha256 while streaming: the bytes
            # are not what was published. That is tampering or corruption, not
            # a network blip: never retried, never a silent fallback.
            raise IntegrityError(f"{url}: sha256 mismatch ({exc})",
                                 hint="the bundle was altered or corrupted; re-publish "
                                 "it") from None
        except (*aws.CALL_ERRORS, OSError) as exc:  # type: ignore[misc]  # a tuple at runtime
            raise Transient(f"{url}: download interrupted ({exc})",
                            hint="the network dropped mid-download; it will be retried") from None
        return digest

    def _verify(self, s3: Any, bucket: str, key: str, *, resp: Any, digest: hashlib._Hash,
                partial: Path, checksum: bool = True) -> None:
        url = f"s3://{bucket}/{key}"
        mode = self.opt("checksum") or "auto"
        if checksum and mode != "off":
            expected = _published_sha256(resp) or self._sidecar_sha256(s3, bucket, key)
            if expected is None and mode == "required":
                raise IntegrityError(f"{url} has no published sha256",
                                     hint=f"upload with --checksum-algorithm SHA256 or add "
                                     f"{key}.sha256, or set s3.checksum: auto")
            if expected is not None and expected != digest.hexdigest():
                raise IntegrityError(f"{url}: sha256 mismatch (expected {expected[:16]}..., "
                                     f"got {digest.hexdigest()[:16]}...)",
                                     hint="the bundle was altered or truncated; re-publish it")
        keys = self.opt("signature_keys") or []
        if keys or self.opt("require_signature"):
            self._verify_signature(s3, bucket, key, partial, keys)

    def _sidecar_sha256(self, s3: Any, bucket: str, key: str) -> str | None:
        body = self._small_object(s3, bucket, f"{key}.sha256")
        if body is None:
            return None
        token = body.decode("ascii", "replace").split()[:1]
        if not token or len(token[0]) != 64:
            raise IntegrityError(f"s3://{bucket}/{key}.sha256 is not in sha256sum format",
                                 hint="write it as '<64 hex chars>  <file name>'")
        return token[0].lower()

    def _verify_signature(self, s3: Any, bucket: str, key: str, partial: Path,
                          keys: list[str]) -> None:
        from cryptography.exceptions import InvalidSignature

        url = f"s3://{bucket}/{key}"
        sig = self._small_object(s3, bucket, f"{key}.sig")
        if sig is None:
            if self.opt("require_signature"):
                raise IntegrityError(f"{url} has no signature {key}.sig",
                                     hint="sign the bundle (Ed25519) and upload <key>.sig")
            log.warning("%s has no signature; accepted (s3.require_signature is off)", url)
            return
        signature = _decode_signature(sig)
        data = partial.read_bytes()
        for public in (load_public_key(k) for k in keys):
            try:
                public.verify(signature, data)
            except InvalidSignature:
                continue
            log.info("%s signature verified", url)
            return
        raise IntegrityError(f"{url}: signature does not match any key in s3.signature_keys",
                             hint="the bundle was altered, or it was signed with another key")

    def _small_object(self, s3: Any, bucket: str, key: str) -> bytes | None:
        resp = self._call(f"s3://{bucket}/{key}", lambda: s3.get_object(Bucket=bucket, Key=key),
                          missing_ok=True)
        if resp is None:
            return None
        data = bytearray()
        try:
            for chunk in self._chunks(resp["Body"], f"s3://{bucket}/{key}"):
                data += chunk
                if len(data) > _SMALL_OBJECT_MAX:
                    break
        except OSError as exc:
            raise Transient(f"s3://{bucket}/{key}: download interrupted ({exc})",
                            hint="the network dropped mid-download; it will be retried") from None
        finally:
            resp["Body"].close()
        return bytes(data[:_SMALL_OBJECT_MAX])

    def _chunks(self, body: Any, url: str, expected: int | None = None) -> Iterator[bytes]:
        """``body``'s bytes as they arrive, within the deadline and above the minimum rate.

        ``read1`` returns what the socket has (up to a chunk) instead of
        waiting for a full chunk, so a dripping server cannot keep one read
        going past the deadline; each read is bounded by the read timeout.
        A body shorter than ``expected`` (Content-Length) is an interrupted
        download, as botocore's own reader would say.
        """
        raw = getattr(body, "_raw_stream", None)
        read = raw.read1 if raw is not None and hasattr(raw, "read1") else body.read
        window_start, window_bytes, total = time.monotonic(), 0, 0
        while True:
            if self.deadline.done():
                why = "canceled" if self.deadline.canceled() else "not complete within the " \
                    "fetch deadline (fetch.retry_budget)"
                raise Transient(f"{url}: download {why}",
                                hint="check the network path to S3, or raise "
                                "fetch.retry_budget for a large bundle")
            chunk = read(_CHUNK)
            if not chunk:
                if expected is not None and total != expected:
                    raise Transient(f"{url}: download interrupted (got {total} of {expected} "
                                    "bytes)", hint="the network dropped mid-download; it will "
                                    "be retried")
                return
            yield bytes(chunk)
            total += len(chunk)
            window_bytes += len(chunk)
            elapsed = time.monotonic() - window_start
            if elapsed >= LOW_SPEED_S:
                if window_bytes / elapsed < MIN_RATE_BPS:
                    raise Transient(f"{url}: download stalled (below {MIN_RATE_BPS} B/s for "
                                    f"{LOW_SPEED_S:.0f}s)", hint="check the network path to S3")
                window_start, window_bytes = time.monotonic(), 0

    def _call(self, url: str, call: Any, *, not_modified_ok: bool = False,
              missing_ok: bool = False) -> Any:
        from botocore.exceptions import ClientError

        from pullboot import aws

        if self.deadline.done():
            raise Transient(f"{url}: not fetched within the fetch deadline (fetch.retry_budget)"
                            if not self.deadline.canceled() else f"{url}: canceled",
                            hint="check the network path to S3")
        try:
            return call()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "?"))
            if not_modified_ok and code in ("304", "NotModified"):
                return None
            if missing_ok and code in _NOT_FOUND:
                return None
            if code in _NOT_FOUND:
                raise SourceError(f"{url}: {code}", hint="the bundle does not exist: check "
                                  "the key, {role} in the URL and s3.version_id") from None
            if code in _AUTH:
                raise AuthError(f"{url}: {code}", hint="allow s3:GetObject (and "
                                "s3:GetObjectVersion) on the bundle in the instance role") from None
            if code in _PERMANENT_HINTS:
                raise SourceError(f"{url}: {code}", hint=_PERMANENT_HINTS[code]) from None
            raise Transient(f"{url}: {code}", hint="S3 is throttling or unavailable") from None
        except aws.CALL_ERRORS as exc:
            # An unparsable answer is as likely a proxy or portal in the way as
            # anything: transient, so the last good release can run.
            raise Transient(f"{url}: {aws.describe_failure(exc)}",
                            hint="check the network path to S3 and AWS_ENDPOINT_URL(_S3)") from None


def _revision(resp: Any) -> str:
    return str(resp.get("VersionId") or str(resp.get("ETag", "")).strip('"'))


def _published_sha256(resp: Any) -> str | None:
    value = resp.get("ChecksumSHA256")
    if not value or "-" in str(value):  # "-N": a multipart composite, not the object's hash
        return None
    try:
        return base64.b64decode(value).hex()
    except (binascii.Error, ValueError):
        return None


def _decode_signature(raw: bytes) -> bytes:
    if len(raw) == 64:
        return raw
    try:
        decoded = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != 64:
        raise IntegrityError("bundle signature is not a 64-byte Ed25519 signature "
                             "(raw or base64)", hint="sign with Ed25519 and upload the "
                             "signature as <key>.sig")
    return decoded


def load_public_key(spec: str) -> Any:
    """An Ed25519 public key from a PEM file path, inline PEM, or base64 of the 32 raw bytes."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text = spec.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = load_pem_public_key(text.encode())
        elif Path(text).is_file():
            key = load_pem_public_key(Path(text).read_bytes())
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"s3.signature_keys entry {text[:40]!r} is not an Ed25519 public "
                          f"key ({exc})", hint="give a PEM file, inline PEM, or base64 of "
                          "the 32-byte key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"s3.signature_keys entry {text[:40]!r} is not Ed25519",
                          hint="only Ed25519 signatures are supported")
    return key


def _read_meta(path: Path) -> dict[str, Any] | None:
    # The one tolerant reader: a damaged cache entry is "not cached", never a hang or a crash.
    return read_json(path, dict, what="S3 cache metadata")


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    write_json_atomic(path, meta)
