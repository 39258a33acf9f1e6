"""Find pullboot's section in EC2 user-data.

User-data may be a plain YAML or JSON document, a ``#cloud-config``
document, gzip-compressed, or MIME multipart (cloud-init's formats). The part
we want is a mapping with a top-level ``pullboot:`` key. Anything else (shell
scripts, other tools' config, binary blobs) is not ours and is ignored.

Never log the raw user-data: it often holds secrets.
"""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, Final

import yaml

from pullboot.errors import ConfigError

log = logging.getLogger(__name__)

SECTION: Final = "pullboot"
# Real user-data is at most 16 KiB raw; a gzip inside it may expand. Past this
# it is not a config document, and we refuse to inflate it further.
MAX_EXPANDED: Final = 1024 * 1024
_GZIP_MAGIC: Final = b"\x1f\x8b"


def parse_user_data(raw: bytes | None) -> dict[str, Any] | None:
    """Return the ``pullboot:`` mapping from user-data, or ``None`` if there is none.

    Raises ConfigError only when a ``pullboot:`` key is present but is not a
    mapping: that is our format, written wrongly, and should not be ignored.
    """
    if not raw:
        return None
    for doc in _documents(raw):
        if isinstance(doc, Mapping) and SECTION in doc:
            section = doc[SECTION]
            if section is None:
                return {}
            if not isinstance(section, Mapping):
                raise ConfigError(
                    f"user-data has a 'pullboot:' key holding {type(section).__name__}, "
                    "not a mapping",
                    hint="write it as 'pullboot:' followed by indented keys, "
                    "e.g. 'pullboot: {role: web}'",
                )
            return dict(section)
    log.debug("user-data holds no 'pullboot:' section; ignored")
    return None


def _documents(raw: bytes) -> Iterator[Any]:
    """Yield every parsed document found in ``raw`` (after gunzip / MIME split)."""
    data = _gunzip(raw)
    if data is None:
        return
    head = data[:512].lstrip().lower()
    if head.startswith((b"content-type:", b"mime-version:")):
        import email  # ~10 ms, and only MIME user-data needs it
        import email.policy

        message = email.message_from_bytes(data, policy=email.policy.compat32)
        for part in message.walk():
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                yield from _documents(payload)
        return
    text = _decode(data)
    if text is None or text.startswith("#!"):
        return
    try:
        yield yaml.safe_load(text)
    except yaml.YAMLError:
        log.warning("user-data is not YAML or JSON; ignored (it may belong to another tool)")


def _gunzip(raw: bytes) -> bytes | None:
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
            data = gz.read(MAX_EXPANDED + 1)
    except (OSError, EOFError, zlib.error):
        log.warning("user-data looks gzip-compressed but does not decompress; ignored")
        return None
    if len(data) > MAX_EXPANDED:
        log.warning("compressed user-data expands beyond %d bytes; ignored", MAX_EXPANDED)
        return None
    return data


def _decode(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        log.warning("user-data is not UTF-8 text; ignored")
        return None
    if "\x00" in text:
        log.warning("user-data contains NUL bytes; ignored")
        return None
    return text
