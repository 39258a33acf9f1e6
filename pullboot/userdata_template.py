"""``## template: jinja`` user-data, rendered the way a security review can accept.

cloud-init renders such a document as a Jinja template with the instance's
data (``v1.instance_id``, ``v1.region``, ... and the same names at top level)
and then reads the result as user-data again. pullboot does the same, with a
deliberately small template language, because this runs as root on input
whoever launched the instance wrote:

* ``jinja2.sandbox.SandboxedEnvironment`` with no loader (no ``include``,
  ``import`` or ``extends``: no filesystem), no globals (no ``range``,
  ``namespace``, ``lipsum``...), autoescape off; nothing touches the network.
* Before rendering, the parsed template is checked against an allow-list of
  node types: output, constants, names, attribute/item lookups, ``~``,
  ``{% if %}``/``elif``/``else``, comparisons, ``and``/``or``/``not``, tests
  and the filters in :data:`FILTERS`. No loops, calls, arithmetic, ``set``,
  macros or blocks, so rendering is linear in the template's size and its
  output at most the template's size times the longest value; it is capped
  at the caller's byte budget anyway.
* A name pullboot does not provide renders as cloud-init renders it,
  ``CI_MISSING_JINJA_VAR/<name>``; the parser refuses a ``pullboot:`` section
  that contains one (other tools' keys may use cloud-init's other data).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from pullboot.errors import ConfigError

MISSING: Final = "CI_MISSING_JINJA_VAR/"
# The v1 keys pullboot can fill (cloud-init's standardised instance-data names).
V1_NAMES: Final = ("instance_id", "region", "availability_zone", "local_hostname",
                   "cloud_name", "platform")
# EC2 user-data is 16 KiB raw; gzip could make a template larger, and compiling
# one costs time roughly linear in its size: 64 KiB keeps it well under a second.
MAX_TEMPLATE: Final = 64 * 1024
FILTERS: Final = frozenset({"default", "d", "lower", "upper", "trim", "string"})
TESTS: Final = frozenset({"defined", "undefined", "none", "string", "eq", "ne", "equalto"})
_HEADER: Final = re.compile(r"##\s*template:\s*jinja\s*$", re.I)  # cloud-init's header
_HINT: Final = ("keep a user-data template to {{ v1.<name> }} substitutions, {% if %} and the "
                "filters " + ", ".join(sorted(FILTERS)) + "; or drop '## template: jinja'")


def template_vars(*, instance_id: str | None, region: str | None,
                  availability_zone: str | None, hostname: str | None) -> dict[str, Any]:
    """cloud-init's ``v1`` instance data for what pullboot knows (absent values left out).

    The names are cloud-init's standardised keys (docs: instance-data, "v1"),
    also given at top level as cloud-init does (``{{ instance_id }}``).
    """
    v1 = {"instance_id": instance_id, "region": region, "availability_zone": availability_zone,
          "local_hostname": hostname, "cloud_name": "aws", "platform": "ec2"}
    present = {k: v for k, v in v1.items() if v}
    return {"v1": present, **present}


def render(text: str, variables: Mapping[str, Any], *, max_bytes: int) -> str:
    """Render a ``## template: jinja`` document (header line included) within the rules above.

    Raises ConfigError for a template larger than :data:`MAX_TEMPLATE`, outside
    the allowed language, nested too deeply, with a syntax error, or with
    output past ``max_bytes``. Messages name the construct and the
    line, never the template's text.
    """
    import jinja2  # ansible-core's dependency; only templated user-data needs it
    from jinja2 import nodes
    from jinja2.sandbox import SandboxedEnvironment

    class Missing(jinja2.ChainableUndefined):
        def __str__(self) -> str:
            return MISSING + str(self._undefined_name)

    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TEMPLATE:
        raise ConfigError(f"user-data template is {size} bytes; the limit is {MAX_TEMPLATE}",
                          hint=_HINT)
    env = SandboxedEnvironment(undefined=Missing, autoescape=False, keep_trailing_newline=True)
    env.globals.clear()
    first, _, rest = text.lstrip().partition("\n")
    body = rest if _HEADER.match(first) else text  # a text/jinja2 part may lack the line
    try:
        tree = env.parse(body)
        _check(tree, nodes)
        template = env.from_string(tree)
        out: list[str] = []
        size = 0  # now the output's
        for chunk in template.generate(**variables):
            size += len(chunk.encode("utf-8", "surrogatepass"))
            if size > max_bytes:
                raise ConfigError(f"user-data template renders to more than {max_bytes} bytes",
                                  hint=_HINT)
            out.append(chunk)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"user-data template has a Jinja syntax error at line "
                          f"{(exc.lineno or 0) + 1}: {(exc.message or '')[:120]}",
                          hint=_HINT) from None
    except (RecursionError, SyntaxError, MemoryError):
        # Deep nesting ends in Jinja's parser's or Python's compiler's recursion limit.
        raise ConfigError("user-data template nests expressions or blocks too deeply",
                          hint=_HINT) from None
    except jinja2.TemplateError as exc:
        raise ConfigError(f"user-data template could not be rendered: {type(exc).__name__}",
                          hint=_HINT) from None
    return "".join(out)


def _check(tree: Any, nodes: Any) -> None:
    allowed = (nodes.Template, nodes.Output, nodes.TemplateData, nodes.Const, nodes.Name,
               nodes.Getattr, nodes.Getitem, nodes.Concat, nodes.If, nodes.Compare,
               nodes.Operand, nodes.Not, nodes.And, nodes.Or, nodes.CondExpr, nodes.Filter,
               nodes.Test, nodes.List, nodes.Tuple)
    for node in tree.find_all(nodes.Node):
        if not isinstance(node, allowed):
            raise ConfigError(f"user-data template uses {type(node).__name__} at line "
                              f"{(getattr(node, 'lineno', 0) or 0) + 1}, which pullboot does "
                              "not render", hint=_HINT)
        if isinstance(node, nodes.Filter) and node.name not in FILTERS:
            raise ConfigError(f"user-data template uses the filter {node.name[:40]!r}, which "
                              "pullboot does not render", hint=_HINT)
        if isinstance(node, nodes.Test) and node.name not in TESTS:
            raise ConfigError(f"user-data template uses the test {node.name[:40]!r}, which "
                              "pullboot does not render", hint=_HINT)
