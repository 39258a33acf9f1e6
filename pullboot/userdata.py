"""Find pullboot's section in EC2 user-data.

User-data may be a plain YAML or JSON document, a ``#cloud-config``
document, gzip-compressed, MIME multipart (with or without a leading
``From nobody`` line), a ``#cloud-config-archive`` or a ``## template: jinja``
document: cloud-init's formats, read as cloud-init reads them. The parts we
want are mappings with a top-level ``pullboot:`` key, merged in order by
cloud-init's rules. ``#include`` parts are counted and warned about, never
fetched. Anything else (shell scripts, other tools' config, binary blobs) is
not ours and is ignored.

Never log the raw user-data: it often holds secrets.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from pullboot import userdata_merge, userdata_template
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
# How a name the template did not have renders (cloud-init's marker): a name, capped.
_MISSING_VAR: Final = re.compile(re.escape(userdata_template.MISSING) + r"(\w{1,40})")
_GZIP_MAGIC: Final = b"\x1f\x8b"
_HINT: Final = ("EC2 user-data is at most 16 KiB: keep pullboot's section small, flat and "
                "uncompressed")


# cloud-init's part types by first line (cloudinit/handlers/__init__.py,
# INCLUSION_TYPES_MAP; compared lower-cased, the longest prefix first). Types
# that are not YAML for us are skipped; anything else is read as YAML/JSON.
_STARTS: Final = (
    ("#cloud-config-archive", "archive"), ("#cloud-config-jsonp", "jsonp"),
    ("#cloud-boothook", "skip"), ("#cloud-config", "yaml"), ("#part-handler", "skip"),
    ("#include-once", "include"), ("#include", "include"), ("## template: jinja", "jinja"),
    ("#!", "skip"),
)
# A MIME or archive part's declared type, when it says more than its first line
# (cloud-init sniffs text/plain and text/x-shellscript parts, trusts the others).
_CONTENT_TYPES: Final = {
    "text/cloud-config": "yaml", "text/cloud-config-archive": "archive",
    "text/x-include-url": "include", "text/x-include-once-url": "include",
    "text/jinja2": "jinja", "text/cloud-boothook": "skip", "text/part-handler": "skip",
    "text/cloud-config-jsonp": "jsonp",
}
_MERGE_HEADERS: Final = ("Merge-Type", "X-Merge-Type")


@dataclass
class _Budget:
    """What is left of the expansion limits while one user-data blob is unpacked."""

    expanded: int = MAX_EXPANDED
    parts: int = MAX_PARTS
    variables: Mapping[str, Any] = field(default_factory=dict)
    includes: int = 0


@dataclass(frozen=True)
class _Doc:
    """One parsed document and the Merge-Type header of the part it came from."""

    value: Any
    merge_header: str | None


def parse_user_data(raw: bytes | None, *,
                    variables: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Return the ``pullboot:`` mapping from user-data, or ``None`` if there is none.

    Every document holding ``pullboot:`` counts, merged in order by
    cloud-init's rules (:mod:`pullboot.userdata_merge`; by default the last one
    wins). ``variables`` are what a ``## template: jinja`` part may use
    (:func:`pullboot.userdata_template.template_vars`). Raises ConfigError
    when a limit is passed, when the merged ``pullboot:`` is not a mapping (our
    format, written wrongly, is not ignored), or when a template that holds it
    cannot be rendered.
    """
    if not raw:
        return None
    budget = _Budget(variables=variables or {})
    merged: dict[str, Any] = {}
    for doc in _documents(raw, budget, depth=0):
        if isinstance(doc.value, Mapping) and SECTION in doc.value:
            how = userdata_merge.mergers_for(doc.value, doc.merge_header)
            merged = userdata_merge.merge(merged, {SECTION: doc.value[SECTION]}, how)
    if budget.includes:
        log.warning("user-data has %d #include part(s); pullboot does not fetch user-data "
                    "includes (see README, User-data), so any pullboot: section behind them "
                    "is not read", budget.includes)
    if SECTION not in merged:
        log.debug("user-data holds no 'pullboot:' section; ignored")
        return None
    return _section(merged[SECTION])


def _section(section: Any) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ConfigError(
            f"user-data has a 'pullboot:' key holding {type(section).__name__}, "
            "not a mapping",
            hint="write it as 'pullboot:' followed by indented keys, "
            "e.g. 'pullboot: {role: web}'",
        )
    missing = _MISSING_VAR.search(json.dumps(section, default=str))
    if missing is not None:
        raise ConfigError(
            f"user-data template uses {missing.group(1)!r} in its 'pullboot:' section, a "
            "variable pullboot does not provide",
            hint="pullboot provides " + ", ".join(f"v1.{k}" for k in userdata_template.V1_NAMES)
            + " (cloud-init's names; also without 'v1.')",
        )
    return dict(section)


def _documents(raw: bytes, budget: _Budget, *, depth: int, kind: str | None = None,
               header: str | None = None) -> Iterator[_Doc]:
    """Yield every parsed document found in ``raw`` (after gunzip / MIME / archive / template)."""
    if depth > MAX_NESTING:
        raise ConfigError(f"user-data nests gzip/MIME containers deeper than {MAX_NESTING}",
                          hint=_HINT)
    data = _gunzip(raw, budget)
    if data is None:
        return
    if data is not raw:
        yield from _documents(data, budget, depth=depth + 1, kind=kind, header=header)
        return
    if _is_mime(data):
        yield from _mime_documents(data, budget, depth=depth)
        return
    text = _decode(data)
    if text is None:
        return
    kind = kind or _sniff(text)
    if kind == "archive":
        yield from _archive_documents(text, budget, depth=depth)
    elif kind == "jinja":
        yield from _template_documents(text, budget, depth=depth, header=header)
    elif kind == "include":
        budget.includes += 1
    elif kind == "jsonp" and SECTION in text:
        log.warning("user-data has a #cloud-config-jsonp part that mentions pullboot; "
                    "pullboot does not apply JSON patches: write the section as cloud-config")
    elif kind == "yaml":
        try:
            yield _Doc(_load(text), header)
        except yaml.YAMLError:
            log.warning("user-data is not YAML or JSON; ignored (it may belong to another tool)")


def _load(text: str) -> Any:
    return load_yaml(text, what="user-data", error=ConfigError, limits=YAML_LIMITS, hint=_HINT)


def _is_mime(data: bytes) -> bool:
    """cloud-init's test (a ``MIME-Version:`` header in the first 4 KiB), so a leading
    ``From nobody ...`` mbox line (Python's email, some tools) is MIME too."""
    head = data[:4096].lower()
    return b"mime-version:" in head or head.lstrip().startswith(b"content-type:")


def _sniff(text: str) -> str:
    head = text.lstrip()[:32].lower()
    return next((kind for prefix, kind in _STARTS if head.startswith(prefix)), "yaml")


def _mime_documents(data: bytes, budget: _Budget, *, depth: int) -> Iterator[_Doc]:
    import email  # ~10 ms, and only MIME user-data needs it
    import email.policy

    try:
        message = email.message_from_bytes(data, policy=email.policy.compat32)
        parts = [part for part in message.walk() if not part.is_multipart()]
    except RecursionError:
        raise ConfigError("user-data nests MIME multiparts too deeply", hint=_HINT) from None
    _count_parts(budget, len(parts))
    for part in parts:
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            header = next((str(part[h]) for h in _MERGE_HEADERS if part[h]), None)
            yield from _documents(payload, budget, depth=depth + 1,
                                  kind=_CONTENT_TYPES.get(part.get_content_type()),
                                  header=header)


def _archive_documents(text: str, budget: _Budget, *, depth: int) -> Iterator[_Doc]:
    """``#cloud-config-archive``: a YAML list of parts, each a string or a mapping with
    ``content`` and optional ``type`` (and headers such as ``Merge-Type``)."""
    try:
        entries = _load(text)
    except yaml.YAMLError:
        log.warning("user-data #cloud-config-archive is not YAML; ignored")
        return
    if not isinstance(entries, list):
        log.warning("user-data #cloud-config-archive is not a list of parts; ignored")
        return
    _count_parts(budget, len(entries))
    for raw_entry in entries:
        entry = {"content": raw_entry} if isinstance(raw_entry, str) else raw_entry
        if not isinstance(entry, Mapping) or not isinstance(entry.get("content"), str):
            continue  # cloud-init skips these too
        ctype = entry.get("type")
        kind = _CONTENT_TYPES.get(ctype) if isinstance(ctype, str) else None
        header = next((str(entry[h]) for h in _MERGE_HEADERS if entry.get(h)), None)
        yield from _documents(entry["content"].encode("utf-8", "surrogatepass"), budget,
                              depth=depth + 1, kind=kind, header=header)


def _template_documents(text: str, budget: _Budget, *, depth: int,
                        header: str | None) -> Iterator[_Doc]:
    try:
        rendered = userdata_template.render(text, budget.variables, max_bytes=budget.expanded)
    except ConfigError:
        if SECTION not in text:
            log.warning("user-data has a Jinja template pullboot cannot render; ignored "
                        "(it holds no pullboot: section)")
            return
        raise
    data = rendered.encode("utf-8", "surrogatepass")
    budget.expanded -= len(data)
    yield from _documents(data, budget, depth=depth + 1, header=header)


def _count_parts(budget: _Budget, count: int) -> None:
    budget.parts -= count
    if budget.parts < 0:
        raise ConfigError(f"user-data has more than {MAX_PARTS} MIME parts", hint=_HINT)


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
