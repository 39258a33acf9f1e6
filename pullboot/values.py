"""Values are data: checks that keep a setting's value from acting as an option or a path.

A value from any origin may end up on a command line (git, ansible-playbook)
or in a file name. Each check here refuses the shapes that would make it
anything but data there: a leading ``-`` (an option), control characters and
whitespace (argument or header splitting), ``..`` and ``/`` (a path outside
the tree), git's ``<transport>::`` remote-helper syntax (a command). They run
in :func:`pullboot.config.coerce`, so every origin and every consumer gets the
same answer, before anything is fetched.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit, urlunsplit

MAX_REF: Final = 255
MAX_URL: Final = 2048
MAX_WORD: Final = 1024
# What may follow ``git+`` (or stand alone for git): the transports git itself
# speaks. Anything else (ext::, fd::, a helper named in the URL) is refused.
GIT_SCHEMES: Final = frozenset({"https", "http", "ssh", "git", "file"})
_CONTROL_RE: Final = re.compile(r"[\x00-\x20\x7f]")
_SCP_RE: Final = re.compile(r"^[\w.-]+@[\w.-]+:(?!/)[^\s]*$")
_HOST_LABEL_RE: Final = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def redact_url(url: str) -> str:
    """Drop user:password from a URL (tokens in URLs must never be logged or reported).

    A value that does not parse as a URL comes back whole: it has no userinfo to drop.
    """
    try:
        parts = urlsplit(url)
        username, password, port = parts.username, parts.password, parts.port
    except ValueError:
        return url
    if username is None and password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal: keep its brackets
        host = f"[{host}]"
    if port:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# Settings whose values are URLs that may carry user:password.
URL_SETTINGS: Final = frozenset({"source", "results.s3"})


def shown(key: str, value: object) -> object:
    """``value`` as logs, ``plan`` and reports may show it: URLs without credentials."""
    return redact_url(value) if key in URL_SETTINGS and isinstance(value, str) else value


def check_git_ref(ref: str) -> str:
    """Return ``ref`` if git would take it as a ref name or a commit sha, else ValueError.

    The rules of ``git check-ref-format --allow-onelevel`` (a unit test checks
    them against git itself), and never a leading ``-``.
    """
    why = _ref_problem(ref)
    if why:
        raise ValueError(f"{ref[:80]!r} is not a git branch, tag or commit sha: {why}")
    return ref


def _ref_problem(ref: str) -> str | None:
    checks: tuple[tuple[bool, str], ...] = (
        (not ref, "it is empty"),
        (len(ref) > MAX_REF, f"it is longer than {MAX_REF} characters"),
        (ref.startswith("-"), "it starts with '-' (git would read it as an option)"),
        (bool(_CONTROL_RE.search(ref)), "it holds a space or a control character"),
        (any(c in ref for c in "~^:?*[\\"), "it holds one of ~ ^ : ? * [ \\"),
        (".." in ref or "@{" in ref or ref == "@", "it holds '..' or '@{', or is '@'"),
        (ref.startswith("/") or ref.endswith(("/", ".")) or "//" in ref,
         "it starts or ends with '/', ends with '.', or holds '//'"),
        (any(p.startswith(".") or p.endswith(".lock") for p in ref.split("/")),
         "a part starts with '.' or ends with '.lock'"),
    )
    return next((why for bad, why in checks if bad), None)


def check_source_url(url: str) -> str:
    """Return ``url`` if it can only name a source, else ValueError naming the problem."""
    if not url or len(url) > MAX_URL:
        raise ValueError(f"a source URL must hold 1 to {MAX_URL} characters")
    if url.startswith("-"):
        raise ValueError(f"{redact_url(url)[:80]!r} starts with '-' (a program would read it "
                         "as an option)")
    if _CONTROL_RE.search(url):
        raise ValueError("the source URL holds a space or a control character")
    bare = url[4:] if url.startswith("git+") else url
    head = bare.split("/", 1)[0]
    if "::" in head:
        raise ValueError(f"{redact_url(url)[:80]!r} uses git's '<transport>::' remote-helper "
                         "syntax, which runs a program")
    scheme = urlsplit(bare).scheme.lower()
    if url.startswith("git+") and scheme not in GIT_SCHEMES and not _SCP_RE.match(bare):
        raise ValueError(f"git+{scheme}:// is not a git transport pullboot allows "
                         f"({', '.join(sorted(GIT_SCHEMES))})")
    return url


def check_word(value: str) -> str:
    """An argument value (a host pattern, a tag name): never an option, never split."""
    if len(value) > MAX_WORD:
        raise ValueError(f"longer than {MAX_WORD} characters")
    if value.startswith("-"):
        raise ValueError(f"{value[:80]!r} starts with '-' (ansible would read it as an "
                         "option)")
    if _CONTROL_RE.sub("", value.replace(" ", "")) != value.replace(" ", ""):
        raise ValueError(f"{value[:80]!r} holds a control character")
    return value


def check_words(values: list[str]) -> list[str]:
    """:func:`check_word` for each item of a list setting."""
    return [check_word(v) for v in values]


def safe_host_stem(name: str) -> str | None:
    """``name`` if it is a DNS host name (labels of letters, digits, '-'), else None.

    Used for the ``<fqdn>.yml`` / ``<hostname>.yml`` fallback playbooks: an
    IMDS host name that is not a host name (``../../x/pb``) must never become a
    path, so such a name is simply not a candidate.
    """
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    return name if all(_HOST_LABEL_RE.fullmatch(label) for label in labels) else None


MAX_TREE_PATHS: Final = 64
MAX_TREE_PATH: Final = 1024


def check_tree_path(value: str) -> str:
    """A path relative to the fetched tree (a playbook, an inventory): never outside it.

    Refuses what could leave the tree or act as anything but a path: an
    absolute path, a ``..`` part, a leading ``-`` (an option), ``~``, control
    characters. Links inside the tree are checked again when the path is used
    (:func:`pullboot.playbooks.in_tree`).
    """
    if not value or len(value) > MAX_TREE_PATH:
        raise ValueError(f"a path in the tree must hold 1 to {MAX_TREE_PATH} characters")
    if _CONTROL_RE.sub("", value.replace(" ", "")) != value.replace(" ", ""):
        raise ValueError(f"{value[:80]!r} holds a control character")
    if value.startswith("-"):
        raise ValueError(f"{value[:80]!r} starts with '-' (a program would read it as an "
                         "option)")
    if value.startswith(("/", "~", "\\")):
        raise ValueError(f"{value[:80]!r} is not relative to the fetched tree")
    if ".." in value.replace("\\", "/").split("/"):
        raise ValueError(f"{value[:80]!r} holds '..' (it could leave the fetched tree)")
    return value


def check_inventory(value: str) -> str:
    """An inventory: a path in the tree, or (holding a ``,``) ansible's inline host list.

    Like ``ansible-playbook -i``: ``localhost,`` or ``web1,web2`` names hosts,
    which must then be DNS host names or IP addresses (never a pattern or an
    option); anything else is a path relative to the tree.
    """
    if "," not in value:
        return check_tree_path(value)
    for name in filter(None, (part.strip() for part in value.split(","))):
        if safe_host_stem(name) is None and not _is_ip(name):
            raise ValueError(f"{name[:80]!r} in the host list {value[:80]!r} is not a host "
                             "name or an IP address")
    return value


def check_inventories(values: list[str]) -> list[str]:
    """:func:`check_inventory` for each item, at most MAX_TREE_PATHS."""
    if len(values) > MAX_TREE_PATHS:
        raise ValueError(f"more than {MAX_TREE_PATHS} inventories")
    return [check_inventory(v) for v in values]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_tree_paths(values: list[str]) -> list[str]:
    """:func:`check_tree_path` for each item of a list setting, at most MAX_TREE_PATHS."""
    if len(values) > MAX_TREE_PATHS:
        raise ValueError(f"more than {MAX_TREE_PATHS} paths")
    return [check_tree_path(v) for v in values]


_JINJA_MARKS: Final = ("{{", "{%", "{#")


def check_data(value: object, where: str) -> None:
    """ValueError unless ``value`` is plain data: JSON's kinds, finite numbers, safe keys.

    Launch parameters from tags and user-data reach the play as data
    (:func:`as_unsafe_json`); anything else (a set, bytes, a date: types a YAML
    tag can make) is refused here, before anything is fetched, rather than
    slipping through a walk that lists the types it knows. Mapping keys cannot
    be marked unsafe in ansible's JSON, so a key may not hold template marks.
    """
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} holds a number that is not finite")
        return
    if isinstance(value, list | tuple):
        for item in value:
            check_data(item, where)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} has a key that is not a string ({key!r:.40})")
            if any(mark in key for mark in _JINJA_MARKS):
                raise ValueError(f"{where} has a key holding a template mark ({key[:40]!r})")
            check_data(item, where)
        return
    raise ValueError(f"{where} holds a {type(value).__name__}: launch parameters are "
                     "mappings, lists, strings, numbers, booleans and null")


def as_unsafe_json(value: object, where: str) -> object:
    """``value`` for ansible's JSON loader with every string marked ``__ansible_unsafe``."""
    check_data(value, where)
    if isinstance(value, str):
        return {"__ansible_unsafe": value}
    if isinstance(value, list | tuple):
        return [as_unsafe_json(item, where) for item in value]
    if isinstance(value, dict):
        return {key: as_unsafe_json(item, where) for key, item in value.items()}
    return value


# setting key -> the check its (coerced, non-None) value must pass
VALIDATORS: Final[dict[str, Callable[..., object]]] = {
    "ref": check_git_ref,
    "source": check_source_url,
    "run.limit": check_word,
    "run.tags": check_words,
    "run.skip_tags": check_words,
    "run.inventory": check_inventories,
    "playbooks": check_tree_paths,
}
