"""Secret references: ``ssm:NAME``, ``secretsmanager:ID``, ``env:VAR``, ``file:PATH``.

A reference names where a secret lives; :func:`resolve` fetches the value
into memory with the instance role (botocore's credential chain) and never
logs it. Callers keep values out of URLs, files and reports.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Final

from pullboot.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

SCHEMES: Final = ("ssm", "secretsmanager", "env", "file")


def scheme_of(ref: str) -> str:
    """The scheme of a reference; a bare path counts as ``file``."""
    scheme, sep, _ = ref.partition(":")
    if sep and scheme in SCHEMES:
        return scheme
    if ref.startswith(("/", "~", ".")):
        return "file"
    raise ConfigError(f"secret reference {ref[:60]!r} has no known scheme",
                      hint="write ssm:/path/name, secretsmanager:name, env:VAR or file:/path")


def resolve(ref: str, *, region: str | None, what: str) -> str:
    """Fetch the secret ``ref`` names; SourceError naming ``what`` on failure."""
    scheme = scheme_of(ref)
    name = ref.removeprefix("file:") if scheme == "file" else ref.split(":", 1)[1]
    if scheme == "env":
        value = os.environ.get(name)
        if value is None:
            raise SourceError(f"{what}: environment variable {name} is not set",
                              hint=f"set {name}, or point {what} at ssm: or secretsmanager:")
        return value
    if scheme == "file":
        try:
            return Path(name).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise SourceError(f"{what}: cannot read {name}: {exc.strerror}",
                              hint="check the path and that pullboot can read it") from None
    return _from_aws(scheme, name, region=region, what=what)


def _from_aws(scheme: str, name: str, *, region: str | None, what: str) -> str:
    from botocore.exceptions import ClientError

    from pullboot import aws

    try:
        if scheme == "ssm":
            resp = aws.client("ssm", region=region).get_parameter(Name=name, WithDecryption=True)
            value = str(resp["Parameter"]["Value"])
        else:
            resp = aws.client("secretsmanager", region=region).get_secret_value(SecretId=name)
            value = str(resp.get("SecretString") or resp.get("SecretBinary", b"").decode())
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        action = ("ssm:GetParameter and kms:Decrypt" if scheme == "ssm"
                  else "secretsmanager:GetSecretValue")
        raise SourceError(f"{what}: {scheme}:{name} could not be read ({code})",
                          hint=f"allow {action} in the instance role, and check the "
                          "name") from None
    except aws.CALL_ERRORS as exc:
        raise SourceError(f"{what}: {scheme}:{name} could not be read "
                          f"({aws.describe_failure(exc)})",
                          hint="check the network path to the AWS API") from None
    except (KeyError, TypeError, AttributeError):
        # botocore's JSON parser turns a non-JSON 200 into {"message": ...}.
        raise SourceError(f"{what}: {scheme}:{name} could not be read (the endpoint's "
                          "answer is not a valid AWS response)",
                          hint="check the network path to the AWS API and "
                          "AWS_ENDPOINT_URL(_SSM/_SECRETSMANAGER)") from None
    log.debug("%s read from %s:%s", what, scheme, name)
    return value
