"""boto3 clients with pullboot's retry policy, and the few EC2 calls the core needs.

Imported lazily: ``import boto3`` costs about half a second, which a boot on
a dir or git source with IMDS tags never pays. Endpoints follow the standard
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>`` variables (botocore
reads them), which is how the tests reach a moto server on 127.0.0.1.
"""

from __future__ import annotations

import logging
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.parsers import ResponseParserError

from pullboot.errors import IdentityError

log = logging.getLogger(__name__)

# What a botocore call can raise besides ClientError (the service said no):
# BotoCoreError (network, credentials, a checksum) and ResponseParserError,
# which is NOT a BotoCoreError: an endpoint answering 200 with HTML or
# garbage (a captive portal, a wrong AWS_ENDPOINT_URL) raises it. Every
# caller catches this tuple so that such an answer is a clear error.
CALL_ERRORS: tuple[type[Exception], ...] = (BotoCoreError, ResponseParserError)


def describe_failure(exc: Exception) -> str:
    """One line for a CALL_ERRORS exception, naming an unparsable answer as such."""
    if isinstance(exc, ResponseParserError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"the endpoint's answer is not a valid AWS response ({first[:200]})"
    return f"{type(exc).__name__}: {exc}"

# botocore's "standard" mode retries throttling, 5xx and connection errors
# with exponential backoff and jitter; we configure it rather than wrap it.
RETRY_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=5,
    read_timeout=30,
)


def client(service: str, *, region: str | None, within: float | None = None) -> Any:
    """A boto3 client for ``service`` in ``region`` with pullboot's retry policy.

    ``within`` (seconds left of the caller's deadline) shortens the socket
    timeouts so that a call, botocore's own retries included, stays near
    that bound: each of the ``max_attempts`` gets a fifth of it (2 s at
    least), never more than the defaults above.
    """
    config = RETRY_CONFIG
    if within is not None:
        per_try = max(2.0, within / 5)
        config = RETRY_CONFIG.merge(Config(connect_timeout=min(5.0, per_try),
                                           read_timeout=min(30.0, per_try)))
    session = boto3.session.Session()
    return session.client(service, region_name=region, config=config)  # type: ignore[call-overload]


def describe_instance_tags(instance_id: str, *, region: str) -> dict[str, str]:
    """All tags of ``instance_id`` via ``DescribeTags``; raises IdentityError with a fix."""
    ec2 = client("ec2", region=region)
    tags: dict[str, str] = {}
    try:
        pages = ec2.get_paginator("describe_tags").paginate(
            Filters=[{"Name": "resource-id", "Values": [instance_id]}])
        for page in pages:
            for tag in page.get("Tags", []):
                tags[str(tag["Key"])] = str(tag.get("Value", ""))
    except NoCredentialsError:
        raise IdentityError(
            "no AWS credentials for ec2:DescribeTags",
            hint="attach an instance profile, or enable instance metadata tags",
        ) from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise IdentityError(
            f"ec2:DescribeTags for {instance_id} failed: {code}",
            hint="allow ec2:DescribeTags in the instance role, or enable metadata tags",
        ) from None
    except CALL_ERRORS as exc:
        raise IdentityError(f"ec2:DescribeTags for {instance_id} failed: "
                            f"{describe_failure(exc)}",
                            hint="check the network path to the EC2 API and "
                            "AWS_ENDPOINT_URL(_EC2)") from None
    return tags
