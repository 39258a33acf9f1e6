"""Who is this instance: identity document, tags and user-data.

:func:`read_identity` reads IMDS (or, when IMDS is disabled, only the local
hostname); :func:`read_ec2_api_tags` is the fallback for instances whose
metadata tags are not enabled. Both return frozen data; neither logs raw
user-data.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import quote

from pullboot.bounded import Limits, load_json
from pullboot.errors import IdentityError
from pullboot.imds import ImdsClient

log = logging.getLogger(__name__)

# A real identity document is a flat JSON object of about 500 bytes.
IDENTITY_LIMITS: Final = Limits(max_bytes=64 * 1024, max_depth=8)

_DOC_FIELDS = {
    "instance_id": ("instanceId", "/latest/meta-data/instance-id"),
    "region": ("region", "/latest/meta-data/placement/region"),
    "availability_zone": ("availabilityZone", "/latest/meta-data/placement/availability-zone"),
    "instance_type": ("instanceType", "/latest/meta-data/instance-type"),
    "image_id": ("imageId", "/latest/meta-data/ami-id"),
    "account_id": ("accountId", None),
}


@dataclass(frozen=True)
class Identity:
    """The instance as pullboot sees it. Fields are ``None`` off EC2."""

    instance_id: str | None = None
    region: str | None = None
    availability_zone: str | None = None
    instance_type: str | None = None
    image_id: str | None = None
    account_id: str | None = None
    hostname: str = field(default_factory=socket.gethostname)
    fqdn: str = field(default_factory=socket.getfqdn)
    tags: Mapping[str, str] = field(default_factory=dict)
    # "imds", "ec2-api" or None when no tags could be read.
    tags_from: str | None = None
    # Why tags are missing, for the "no role anywhere" error.
    tags_note: str | None = None
    user_data: bytes | None = field(default=None, repr=False)
    source: str = "local"

    def as_dict(self) -> dict[str, Any]:
        """The instance block of reports and of the play's ``pullboot`` var."""
        return {
            "id": self.instance_id, "region": self.region,
            "availability_zone": self.availability_zone,
            "instance_type": self.instance_type, "image_id": self.image_id,
            "account_id": self.account_id, "hostname": self.hostname,
        }


def local_identity() -> Identity:
    """Identity when IMDS is disabled: hostname only."""
    return Identity(tags_note="IMDS disabled", source="local")


def read_identity(client: ImdsClient, *, read_tags: bool) -> Identity:
    """Read the identity document, tags (when ``read_tags``) and user-data."""
    fields = _identity_fields(client)
    tags: dict[str, str] = {}
    tags_from: str | None = None
    note: str | None = None
    if read_tags:
        keys = client.get_text("/latest/meta-data/tags/instance")
        if keys is None:
            note = "instance metadata tags are not enabled (IMDS answered 404)"
        else:
            tags = _read_tags(client, keys)
            tags_from = "imds"
    else:
        note = "reading tags from IMDS is off (imds.tags: false)"
    hostname = client.get_text("/latest/meta-data/local-hostname") or socket.gethostname()
    return Identity(
        **fields, hostname=hostname.split(".")[0], fqdn=hostname if "." in hostname
        else socket.getfqdn(), tags=tags, tags_from=tags_from, tags_note=note,
        user_data=client.get("/latest/user-data"), source="imds",
    )


# EC2's own limits: 50 user tags a resource, keys of 128 and values of 256 characters
# (a few aws:* tags come on top). An IMDS that answers more is not EC2: what is past these
# bounds is dropped with a warning, so a hostile endpoint cannot cost time or memory.
MAX_TAGS: Final = 64
MAX_TAG_KEY: Final = 128
MAX_TAG_VALUE: Final = 256


def _read_tags(client: ImdsClient, listing: str) -> dict[str, str]:
    keys = [k for k in listing.splitlines() if k][:MAX_TAGS + 1]
    if len(keys) > MAX_TAGS:
        log.warning("IMDS lists more than %d instance tags; reading the first %d", MAX_TAGS,
                    MAX_TAGS)
    tags: dict[str, str] = {}
    for n, key in enumerate(keys[:MAX_TAGS]):
        if client.spent:  # a slow IMDS must not stretch the boot tag by tag
            log.warning("IMDS budget spent: %d instance tags not read", len(keys) - n)
            break
        if len(key) > MAX_TAG_KEY:
            log.warning("ignoring an instance tag whose key is longer than %d characters",
                        MAX_TAG_KEY)
            continue
        path = f"/latest/meta-data/tags/instance/{quote(key, safe=':@=,+')}"
        raw = client.get(path)  # not stripped: tag values are verbatim
        if raw is None:
            continue
        value = raw.decode("utf-8", "replace")
        if len(value) > MAX_TAG_VALUE:
            log.warning("ignoring instance tag %r: its value is longer than %d characters",
                        key, MAX_TAG_VALUE)
            continue
        tags[key] = value
    return tags


def _identity_fields(client: ImdsClient) -> dict[str, str | None]:
    raw = client.get("/latest/dynamic/instance-identity/document")
    doc: Mapping[str, Any] = {}
    if raw is not None:
        try:
            parsed = load_json(raw, what="the document", error=IdentityError,
                               limits=IDENTITY_LIMITS)
            if isinstance(parsed, Mapping):
                doc = parsed
            else:
                raise ValueError("not a JSON object")
        except (ValueError, IdentityError) as exc:
            reason = exc.message if isinstance(exc, IdentityError) else exc
            # A broken document must not stop the boot: the same facts are
            # available one by one under meta-data/.
            log.warning("instance identity document is malformed (%s); "
                        "reading meta-data paths instead", reason)
    out: dict[str, str | None] = {}
    for name, (doc_key, path) in _DOC_FIELDS.items():
        value = doc.get(doc_key)
        if not isinstance(value, str) and path is not None:
            value = client.get_text(path)
        out[name] = value if isinstance(value, str) and value else None
    return out


def read_ec2_api_tags(identity: Identity) -> Identity:
    """Fill ``tags`` from EC2 ``DescribeTags`` (instance-role credentials via botocore).

    Failures do not raise: they are kept in ``tags_note`` so that role
    resolution can list them if no role is found anywhere else.
    """
    if not identity.instance_id or not identity.region:
        return _with_tags(identity, {}, None, f"{identity.tags_note}; EC2 API skipped: "
                          "instance id or region unknown")
    from pullboot import aws  # boto3 costs ~0.5 s to import: only when needed

    try:
        tags = aws.describe_instance_tags(identity.instance_id, region=identity.region)
    except IdentityError as exc:
        log.warning("could not read tags through the EC2 API: %s", exc.message)
        return _with_tags(identity, {}, None, f"{identity.tags_note}; EC2 API: {exc.message}")
    log.info("read %d instance tags through the EC2 API", len(tags))
    return _with_tags(identity, tags, "ec2-api", None)


def _with_tags(identity: Identity, tags: Mapping[str, str], tags_from: str | None,
               note: str | None) -> Identity:
    return replace(identity, tags=dict(tags), tags_from=tags_from, tags_note=note)
