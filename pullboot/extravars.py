"""``-e`` / ``--extra-vars`` values, read the way ansible-playbook reads them.

One parser for every ``-e`` pullboot takes (``pullboot run``/``plan`` and the
simulator's ``sim boot``). The values come from the host's command line
(trusted), but are still bounded: an ``@FILE`` is a regular file of at most
1 MiB, opened without blocking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from pullboot import config
from pullboot.bounded import load_yaml
from pullboot.errors import ConfigError


def parse_extra_vars(items: Sequence[str]) -> dict[str, Any]:
    """``-e`` values into one dict, read the way ansible-playbook reads them.

    As ansible-core's ``load_extra_vars``: ``@FILE`` is a YAML/JSON file, a value
    starting with ``{`` or ``[`` is inline YAML/JSON, anything else is a list of
    ``key=value`` pairs split like a shell line (quotes, escapes, ``{{ }}``
    kept whole: ansible's own ``parse_kv``), and later values override earlier
    ones. Unlike ansible, a word that is not ``key=value`` is an error rather
    than a silently dropped ``_raw_params``.
    """
    from pullboot.roles import check_var_name

    out: dict[str, Any] = {}
    for item in items:
        if not item:
            continue  # ansible skips empty -e values too
        data = _extra_vars_item(item)
        for key in data:
            check_var_name(str(key), origin=f"-e {item[:40]}")
        out.update({str(k): v for k, v in data.items()})
    return out


def _extra_vars_item(item: str) -> Mapping[str, Any]:
    shown = repr(item[:60])
    if item.startswith("@"):
        data = _extra_vars_file(Path(item[1:]))
    elif item[0] in "/.":
        raise ConfigError(f"-e {shown} looks like a file name",
                          hint=f"prepend it with '@' (-e @{item[:60]}), as ansible wants")
    elif item[0] in "{[":
        try:
            data = load_yaml(item, what=f"-e {shown}", error=ConfigError)
        except yaml.YAMLError:
            raise ConfigError(f"-e {shown} is not valid JSON/YAML",
                              hint="use KEY=VALUE, @FILE or a JSON object") from None
    else:
        data = _key_values(item)
    if not isinstance(data, Mapping):
        raise ConfigError(f"-e {shown} does not hold a mapping of names to values",
                          hint="a vars file or inline JSON/YAML must be a mapping")
    return data


def _extra_vars_file(path: Path) -> Any:
    fix = "give a readable YAML or JSON file of at most 1 MiB"
    try:
        return load_yaml(config.read_host_file(path, what="-e vars file", hint=fix),
                         what=f"-e @{path}", error=ConfigError)
    except OSError as exc:
        raise ConfigError(f"-e @{path}: cannot read vars file: {exc.strerror}",
                          hint=fix) from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"-e @{path}: not a UTF-8 YAML/JSON file ({type(exc).__name__})",
                          hint=fix) from None


# A key=value item with none of these is one pair: no need to load ansible's splitter
# (~0.1 s of imports) to split it.
_NEEDS_SPLITTER: Final = frozenset(" \t\n\\'\"{%")


def _key_values(item: str) -> dict[str, str]:
    """``a=1 b="x y"`` as ansible reads it: its own parse_kv, imported only when needed."""
    if not _NEEDS_SPLITTER.intersection(item):
        key, sep, value = item.partition("=")
        pairs = {key: value} if sep and key else {"_raw_params": item}
    else:
        from ansible.errors import AnsibleError  # type: ignore[import-untyped]
        from ansible.parsing.splitter import parse_kv  # type: ignore[import-untyped]

        try:
            pairs = {str(k): str(v) for k, v in parse_kv(item).items()}
        except AnsibleError as exc:
            # Not ansible's message: it repeats the whole value, which may be a secret.
            raise ConfigError(f"-e: cannot split {item.partition('=')[0][:40]!r}=... into "
                              f"KEY=VALUE pairs ({type(exc).__name__}: unbalanced quotes or "
                              "{{ }} block)", hint="close the quote or the {{ }} block") from None
    junk = pairs.pop("_raw_params", None)
    if junk is not None:
        raise ConfigError(f"-e {item[:60]!r}: {junk[:40]!r} is not KEY=VALUE",
                          hint="write -e 'env=prod region=eu', -e @vars.yml or -e "
                          "'{\"env\": \"prod\"}'")
    return pairs
