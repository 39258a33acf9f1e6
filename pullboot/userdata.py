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
from dataclasses import dataclass
from typing import Any, Final

import yaml

from pullboot.bounded import Limits, load_yaml
from pullboot.errors import ConfigError

log = logging.getLogger(__name__)

SECTION: Final = "pullboot"
# Real user-data is at most 16 KiB raw (EC2's cap), but gzip and MIME expand
# it: these bound what we inflate and split. Past them it is a bomb, not a
# config document, and the run stops with an error naming the limit.
MAX_EXPANDED: Final = 1024 * 1024  # decompressed bytes, all gzip layers together
MAX_PARTS: Final = 64  # MIME parts, all containers together
MAX_NESTING: Final = 4  # gzip / MIME containers inside each other
# Each YAML document (the parser sees at most MAX_EXPANDED bytes).
YAML_LIMITS: Final = Limits(max_bytes=MAX_EXPANDED, max_depth=32, max_nodes=50_000,
                            max_aliases=500)
_GZIP_MAGIC: Final = b"\x1f\x8b"
_HINT: Final = ("EC2 user-data is at most 16 KiB: keep pullboot's section small, flat and "
                "uncompressed")


@dataclass
class _Budget:
    """What is left of the expansion limits while one user-data blob is unpacked."""

    expanded: int = MAX_EXPANDED
    parts: int = MAX_PARTS


def parse_user_data(raw: bytes | None) -> dict[str, Any] | None:
    """Return the ``pullboot:`` mapping from user-data, or ``None`` if there is none.

    Raises ConfigError only when a ``pullboot:`` key is present but is not a
    mapping: that is our format, written wrongly, and should not be ignored.
    """
    if not raw:
        return None
    for doc in _documents(raw, _Budget(), depth=0):
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


def _documents(raw: bytes, budget: _Budget, *, depth: int) -> Iterator[Any]:
    """Yield every parsed document found in ``raw`` (after gunzip / MIME split)."""
    if depth > MAX_NESTING:
        raise ConfigError(f"user-data nests gzip/MIME containers deeper than {MAX_NESTING}",
                          hint=_HINT)
    data = _gunzip(raw, budget)
    if data is None:
        return
    if data is not raw:
        yield from _documents(data, budget, depth=depth + 1)
        return
    head = data[:512].lstrip().lower()
    if head.startswith((b"content-type:", b"mime-version:")):
        yield from _mime_documents(data, budget, depth=depth)
        return
    text = _decode(data)
    if text is None or text.startswith("#!"):
        return
    try:
        yield load_yaml(text, what="user-data", error=ConfigError, limits=YAML_LIMITS,
                        hint=_HINT)
    except yaml.YAMLError:
        log.warning("user-data is not YAML or JSON; ignored (it may belong to another tool)")


def _mime_documents(data: bytes, budget: _Budget, *, depth: int) -> Iterator[Any]:
    import email  # ~10 ms, and only MIME user-data needs it
    import email.policy

    try:
        message = email.message_from_bytes(data, policy=email.policy.compat32)
        parts = [part for part in message.walk() if not part.is_multipart()]
    except RecursionError:
        raise ConfigError("user-data nests MIME multiparts too deeply", hint=_HINT) from None
    budget.parts -= len(parts)
    if budget.parts < 0:
        raise ConfigError(f"user-data has more than {MAX_PARTS} MIME parts", hint=_HINT)
    for part in parts:
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            yield from _documents(payload, budget, depth=depth + 1)


def _gunzip(raw: bytes, budget: _Budget) -> bytes | None:
    """``raw`` itself, or its gzip content (counted against the budget)."""
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
            data = gz.read(budget.expanded + 1)
    except (OSError, EOFError, zlib.error):
        log.warning("user-data looks gzip-compressed but does not decompress; ignored")
        return None
    budget.expanded -= len(data)
    if budget.expanded < 0:
        raise ConfigError(f"compressed user-data expands beyond {MAX_EXPANDED} bytes",
                          hint=_HINT)
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
