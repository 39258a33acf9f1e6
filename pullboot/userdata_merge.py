"""cloud-init's merge of cloud-config parts, for the ``pullboot:`` key.

cloud-init reads every cloud-config part of a user-data blob in order and
merges each into what came before (``cloudinit/handlers/cloud_config.py``).
A part chooses how with a ``merge_how`` (or ``merge_type``) key, or a
``Merge-Type`` / ``X-Merge-Type`` MIME header; without one the default is
``dict(replace)+list()+str()``: a later part's top-level key replaces the
earlier one whole. So, by default, the last part holding ``pullboot:`` wins,
and ``merge_how: 'dict(recurse_array,no_replace)+list(append)'`` merges the
sections key by key instead. The rules below are cloud-init's mergers
(``cloudinit/mergers/m_dict.py``, ``m_list.py``, ``m_str.py``), applied to
pullboot's section only: other keys are cloud-init's business.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from pullboot.errors import ConfigError

# Merger name -> its options. A name absent here leaves values of its type as they were.
Mergers = dict[str, frozenset[str]]

DEFAULT_HOW: Final = "dict(replace)+list()+str()"
KNOWN: Final = ("dict", "list", "str")
_CHOPPER: Final = re.compile(r"^([a-z_][a-z0-9_]*)\((.*?)\)$")
_HINT: Final = ("write merge_how as cloud-init documents it, e.g. "
                "'dict(recurse_array,no_replace)+list(append)', or leave it out")


def mergers_for(doc: Mapping[str, Any], header: str | None) -> Mergers:
    """The mergers one part asks for (its ``merge_how`` key and its header), or the default.

    Raises ConfigError when ``merge_how`` is not in cloud-init's syntax or names
    a merger cloud-init does not have.
    """
    raw = doc.get("merge_how", doc.get("merge_type"))
    parsed: list[tuple[str, list[str]]] = []
    if raw is not None:
        parsed.extend(_from_value(raw))
    if header:
        parsed.extend(_from_string(header))
    if not parsed:
        parsed = _from_string(DEFAULT_HOW)
    out: Mergers = {}
    for name, opts in parsed:
        if name not in KNOWN:
            raise ConfigError(f"user-data merge_how names merger {name!r}; cloud-init has "
                              f"{', '.join(KNOWN)}", hint=_HINT)
        out.setdefault(name, frozenset(opts))  # the first one named wins, as in cloud-init
    return out


def merge(old: Any, new: Any, how: Mergers) -> Any:
    """``new`` merged into ``old`` by cloud-init's rules (returns a new value)."""
    if isinstance(old, dict):
        return _merge_dict(old, new, how) if "dict" in how else old
    if isinstance(old, list):
        return _merge_list(old, new, how) if "list" in how else old
    if isinstance(old, str):
        if "str" not in how:
            return old
        return old + new if "append" in how["str"] and isinstance(new, str) else new
    return old


def _merge_dict(old: dict[Any, Any], new: Any, how: Mergers) -> Any:
    if not isinstance(new, dict):
        return old
    opts = how["dict"]
    replace = "replace" in opts  # cloud-init's dict default is no_replace
    recurse_array = bool({"recurse_array", "recurse_list"} & opts)
    out = dict(old)
    for key, value in new.items():
        if key not in out:
            out[key] = value
        elif value is None and "allow_delete" in opts:
            del out[key]
        elif replace:
            out[key] = value
        elif (isinstance(value, dict) or (isinstance(value, list) and recurse_array)
              or (isinstance(value, str) and "recurse_str" in opts)):
            out[key] = merge(out[key], value, how)
    return out


def _merge_list(old: list[Any], new: Any, how: Mergers) -> Any:
    opts = how["list"]
    method = next((m for m in ("append", "prepend", "replace", "no_replace") if m in opts),
                  "replace")
    if not isinstance(new, list):
        return new if method == "replace" else old
    if method == "append":
        return [*old, *new]
    if method == "prepend":
        return [*new, *old]
    out = list(old)
    if method == "no_replace":
        return out
    for i, value in enumerate(new[:len(out)]):
        if ((isinstance(value, list) and {"recurse_array", "recurse_list"} & opts)
                or (isinstance(value, str) and "recurse_str" in opts)
                or (isinstance(value, dict) and "recurse_dict" in opts)):
            out[i] = merge(out[i], value, how)
        else:
            out[i] = value
    return out


def _from_value(raw: Any) -> list[tuple[str, list[str]]]:
    if isinstance(raw, str):
        return _from_string(raw)
    if not isinstance(raw, list):
        raise ConfigError(f"user-data merge_how is a {type(raw).__name__}, not a string or "
                          "a list", hint=_HINT)
    out: list[tuple[str, list[str]]] = []
    for entry in raw:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            name, opts = entry["name"], entry.get("settings") or []
        elif isinstance(entry, list) and entry and isinstance(entry[0], str):
            name, opts = entry[0], entry[1:]
        else:
            raise ConfigError("user-data merge_how has an entry that is neither "
                              "{name: ..., settings: [...]} nor [name, setting, ...]",
                              hint=_HINT)
        if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
            raise ConfigError(f"user-data merge_how settings of {name!r} are not a list of "
                              "strings", hint=_HINT)
        out.append((name.replace("-", "_").strip().lower(), [o.strip().lower() for o in opts]))
    return out


def _from_string(text: str) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for raw_item in text.split("+"):
        item = raw_item.lower().strip().replace("-", "_")
        if not item:
            continue
        match = _CHOPPER.match(item)
        if match is None:
            raise ConfigError(f"user-data merge_how item {item[:40]!r} is not name(settings)",
                              hint=_HINT)
        opts = [o.strip() for o in match.group(2).split(",") if o.strip()]
        out.append((match.group(1), opts))
    return out
