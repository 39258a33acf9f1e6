"""Ansible vars plugin: the play's ``secret_vars``, fetched inside ansible-playbook.

pullboot sets ``PULLBOOT_SECRET_VARS`` to a JSON object of variable names and
secret references (``{"db_password": "ssm:/prod/db"}``, never values) and puts
this directory on ``ANSIBLE_VARS_PLUGINS``. The values are fetched once per
ansible-playbook process with the instance role and given to every host as
host variables; they exist only in this process's memory (and its forks).
Without the env var the plugin does nothing.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.errors import AnsibleError  # type: ignore[import-untyped]
from ansible.inventory.host import Host  # type: ignore[import-untyped]
from ansible.plugins.vars import BaseVarsPlugin  # type: ignore[import-untyped]

ENV_VARS = "PULLBOOT_SECRET_VARS"
ENV_REGION = "PULLBOOT_SECRETS_REGION"

_values: dict[str, str] | None = None


def _load() -> dict[str, str]:
    global _values  # noqa: PLW0603 - one fetch per ansible-playbook process
    if _values is None:
        from pullboot.errors import PullbootError
        from pullboot.secrets import SecretRef, fetch

        try:
            names = json.loads(os.environ[ENV_VARS])
            refs = {str(n): SecretRef.parse(r, where=f"secret_vars.{n}") for n, r in names.items()}
            _values = fetch(refs, region=os.environ.get(ENV_REGION) or None)
        except (PullbootError, ValueError, AttributeError) as exc:
            raise AnsibleError(f"pullboot secret_vars: {exc}") from None
    return _values


class VarsModule(BaseVarsPlugin):  # type: ignore[misc]
    """Host variables from ``secret_vars`` (SSM SecureString, Secrets Manager)."""

    def get_vars(self, loader: Any, path: Any, entities: Any, cache: bool = True) -> dict[str, Any]:
        if not os.environ.get(ENV_VARS):
            return {}
        if not isinstance(entities, list):
            entities = [entities]
        if not any(isinstance(entity, Host) for entity in entities):
            return {}
        return dict(_load())
