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

from pullboot.errors import IdentityError

log = logging.getLogger(__name__)

# botocore's "standard" mode retries throttling, 5xx and connection errors
# with exponential backoff and jitter; we configure it rather than wrap it.
RETRY_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=5,
    read_timeout=30,
)


def client(service: str, *, region: str | None) -> Any:
    """A boto3 client for ``service`` in ``region`` with pullboot's retry policy."""
    session = boto3.session.Session()
    return session.client(service, region_name=region, config=RETRY_CONFIG)  # type: ignore[call-overload]


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
    except BotoCoreError as exc:
        raise IdentityError(f"ec2:DescribeTags for {instance_id} failed: {exc}",
                            hint="check the network path to the EC2 API") from None
    return tags
