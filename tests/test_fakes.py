"""Tests of the fakes themselves, through real clients: urllib/botocore for IMDS, boto3 elsewhere.

No test waits on a timer to synchronise: each fault is armed before the call that meets it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.utils import IMDSRegionProvider

from tests.fakes.awsquery import (
    AUTO_SCALING_ENDPOINT_ENV,
    CLOUDFORMATION_ENDPOINT_ENV,
    FakeAwsQuery,
)
from tests.fakes.faultproxy import S3_ENDPOINT_ENV, FaultProxy, ProxyRequest
from tests.fakes.fixtures import IMDS_DISABLED_ENV, IMDS_ENDPOINT_ENV, AwsEnv, FaultProxyFactory
from tests.fakes.fixtures import ImdsFactory as MakeImds
from tests.fakes.imds import TOKEN_HEADER, TTL_HEADER, FakeIMDS, RequestRecord
from tests.fakes.moto import MotoServer

# Also loaded by tests/conftest.py; listing it here keeps this file runnable on its own.
pytest_plugins = ["tests.fakes.fixtures"]

NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1})
KEYS: dict[str, Any] = {"region_name": "eu-west-1", "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing"}


def http(url: str, method: str = "GET", headers: dict[str, str] | None = None,
         ) -> tuple[int, bytes]:
    """One request with urllib; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def token(imds: FakeIMDS, ttl: int = 60) -> dict[str, str]:
    """Fetch a token; return the header dict that carries it."""
    status, body = http(f"{imds.url}/latest/api/token", "PUT", {TTL_HEADER: str(ttl)})
    assert status == 200, body
    return {TOKEN_HEADER: body.decode()}


def refused(port: int) -> bool:
    """True if 127.0.0.1:port refuses a TCP connection."""
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


# -- FakeIMDS ---------------------------------------------------------------------------------


def test_imds_token_flow_serves_identity(imds: FakeIMDS) -> None:
    assert imds.url.startswith("http://127.0.0.1:")
    auth = token(imds)
    base = f"{imds.url}/latest/meta-data"
    assert http(f"{base}/instance-id", headers=auth) == (200, b"i-0123456789abcdef0")
    assert http(f"{base}/placement/region", headers=auth) == (200, b"eu-west-1")
    assert http(f"{base}/placement/availability-zone", headers=auth) == (200, b"eu-west-1a")
    assert http(f"{base}/instance-type", headers=auth) == (200, b"t3.micro")
    listing = http(f"{base}/", headers=auth)[1].decode().splitlines()
    assert {"instance-id", "ami-id", "hostname", "placement/"} <= set(listing)
    assert "tags/" not in listing
    status, body = http(f"{imds.url}/latest/dynamic/instance-identity/document", headers=auth)
    document = json.loads(body)
    assert status == 200
    assert document["instanceId"] == "i-0123456789abcdef0"
    assert document["accountId"] == "123456789012"
    assert document["region"] == "eu-west-1"
    assert http(f"{base}/no-such-thing", headers=auth)[0] == 404


def test_imds_requires_token_unless_v1_allowed(make_imds: MakeImds) -> None:
    v2 = make_imds()
    assert http(f"{v2.url}/latest/meta-data/instance-id")[0] == 401
    assert http(f"{v2.url}/latest/meta-data/instance-id", headers={TOKEN_HEADER: "bogus"})[0] == 401
    v1 = make_imds(allow_imdsv1=True)
    assert http(f"{v1.url}/latest/meta-data/instance-id") == (200, b"i-0123456789abcdef0")
    # A token that is present but invalid is refused even when IMDSv1 is allowed.
    assert http(f"{v1.url}/latest/meta-data/instance-id", headers={TOKEN_HEADER: "bogus"})[0] == 401
    assert v2.requests[0] == RequestRecord("GET", "/latest/meta-data/instance-id", False)
    assert v2.requests[1].had_token


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({}, 400), ({TTL_HEADER: "0"}, 400), ({TTL_HEADER: "21601"}, 400),
     ({TTL_HEADER: "abc"}, 400), ({TTL_HEADER: "21600"}, 200),
     ({TTL_HEADER: "60", "X-Forwarded-For": "10.0.0.1"}, 403)],
)
def test_imds_token_request_validation(imds: FakeIMDS, headers: dict[str, str],
                                       expected: int) -> None:
    assert http(f"{imds.url}/latest/api/token", "PUT", headers)[0] == expected


def test_imds_token_path_rejects_get(imds: FakeIMDS) -> None:
    assert http(f"{imds.url}/latest/api/token")[0] == 405


def test_imds_tokens_expire_by_clock_and_on_demand(make_imds: MakeImds) -> None:
    now = [1000.0]
    imds = make_imds(clock=lambda: now[0])
    url = f"{imds.url}/latest/meta-data/instance-id"
    auth = token(imds, ttl=10)
    now[0] += 9.9
    assert http(url, headers=auth)[0] == 200
    now[0] += 0.1
    assert http(url, headers=auth)[0] == 401
    fresh = token(imds, ttl=10)
    imds.expire_tokens()
    assert http(url, headers=fresh)[0] == 401
    assert imds.tokens_issued == 2
    assert imds.status_counts[401] == 2


def test_imds_tags_absent_when_disabled_and_live_when_set(imds: FakeIMDS) -> None:
    auth = token(imds)
    tags_url = f"{imds.url}/latest/meta-data/tags/instance"
    assert http(tags_url, headers=auth)[0] == 404
    imds.tags = {"pullboot:roles": "web,base", "Name": "web-1"}
    assert http(tags_url, headers=auth) == (200, b"Name\npullboot:roles")
    assert http(f"{tags_url}/pullboot:roles", headers=auth) == (200, b"web,base")
    assert http(f"{tags_url}/missing", headers=auth)[0] == 404
    assert "tags/" in http(f"{imds.url}/latest/meta-data", headers=auth)[1].decode()
    with pytest.raises(ValueError, match="cannot be exposed"):
        imds.tags = {"a/b": "x"}


def test_imds_user_data_and_identity_override(make_imds: MakeImds) -> None:
    imds = make_imds(user_data=None)
    auth = token(imds)
    assert http(f"{imds.url}/latest/user-data", headers=auth)[0] == 404
    imds.user_data = b"#cloud-config\n\x00binary"
    assert http(f"{imds.url}/latest/user-data", headers=auth) == (200, b"#cloud-config\n\x00binary")
    imds.identity_document = b"{not json"
    doc_url = f"{imds.url}/latest/dynamic/instance-identity/document"
    assert http(doc_url, headers=auth) == (200, b"{not json")


def test_imds_fail_next_then_recovers(imds: FakeIMDS) -> None:
    imds.fail_next(2, 503)
    token_url = f"{imds.url}/latest/api/token"
    assert http(token_url, "PUT", {TTL_HEADER: "60"})[0] == 503
    assert http(token_url, "PUT", {TTL_HEADER: "60"})[0] == 503
    assert http(token_url, "PUT", {TTL_HEADER: "60"})[0] == 200


def test_imds_down_refuses_then_up_on_same_port(imds: FakeIMDS) -> None:
    auth = token(imds)
    port = imds.port
    imds.down()
    assert refused(port)
    with pytest.raises(urllib.error.URLError):
        http(f"{imds.url}/latest/meta-data/instance-id", headers=auth)
    imds.up()
    assert imds.port == port
    assert http(f"{imds.url}/latest/meta-data/instance-id", headers=auth)[0] == 200


def test_imds_start_down_reserves_port_until_up(make_imds: MakeImds) -> None:
    imds = make_imds(start_down=True)
    assert not imds.is_up
    assert refused(imds.port)
    imds.up()
    assert http(f"{imds.url}/latest/api/token", "PUT", {TTL_HEADER: "5"})[0] == 200


def test_imds_delay_is_cut_short_by_stop() -> None:
    with FakeIMDS() as imds:
        imds.delay_s = 30
        with pytest.raises(TimeoutError):
            urllib.request.urlopen(urllib.request.Request(
                f"{imds.url}/latest/api/token", method="PUT", headers={TTL_HEADER: "5"}),
                timeout=0.2)
        started = time.monotonic()
    assert time.monotonic() - started < 5  # stop() aborted the 30 s wait


def test_imds_fixture_env_reaches_botocore(imds: FakeIMDS) -> None:
    assert os.environ[IMDS_ENDPOINT_ENV] == imds.url
    assert IMDS_DISABLED_ENV not in os.environ
    # botocore's own IMDSv2 client (token PUT, then GET with token) against the fake.
    region = IMDSRegionProvider(session=botocore.session.get_session()).provide()
    assert region == "eu-west-1"
    assert [r.method for r in imds.requests] == ["PUT", "GET"]
    assert imds.requests[1].had_token


# -- MotoServer -------------------------------------------------------------------------------


def test_moto_server_port_env_and_reset(aws: AwsEnv, moto_server: MotoServer) -> None:
    assert moto_server.url.startswith("http://127.0.0.1:") and moto_server.port > 0
    assert os.environ["AWS_ENDPOINT_URL"] == moto_server.url
    s3 = boto3.client("s3")  # from the environment alone
    s3.create_bucket(Bucket="reset-me",
                     CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["reset-me"]
    moto_server.reset()
    assert s3.list_buckets()["Buckets"] == []


def test_moto_ec2_tags_round_trip(aws: AwsEnv) -> None:
    ec2 = aws.client("ec2")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
    ec2.create_tags(Resources=[instance["InstanceId"]], Tags=[{"Key": "pullboot:state",
                                                                "Value": "ready"}])
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [instance["InstanceId"]]}])
    assert [(t["Key"], t["Value"]) for t in tags["Tags"]] == [("pullboot:state", "ready")]


# -- FakeAwsQuery ------------------------------------------------------------------------------


def test_query_env_var_names_are_the_ones_botocore_reads(aws_query: FakeAwsQuery,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert boto3.client("autoscaling").meta.endpoint_url == aws_query.url
    assert boto3.client("cloudformation").meta.endpoint_url == aws_query.url
    # The tempting spelling is silently ignored: the service id is "Auto Scaling".
    monkeypatch.delenv(AUTO_SCALING_ENDPOINT_ENV)
    monkeypatch.setenv("AWS_ENDPOINT_URL_AUTOSCALING", aws_query.url)
    assert boto3.client("autoscaling").meta.endpoint_url != aws_query.url
    assert CLOUDFORMATION_ENDPOINT_ENV == "AWS_ENDPOINT_URL_CLOUDFORMATION"


def test_query_records_readiness_calls(aws_query: FakeAwsQuery) -> None:
    asg = boto3.client("autoscaling")
    asg.complete_lifecycle_action(LifecycleHookName="boot", AutoScalingGroupName="web",
                                  LifecycleActionResult="CONTINUE", InstanceId="i-0abc")
    asg.record_lifecycle_action_heartbeat(LifecycleHookName="boot", AutoScalingGroupName="web",
                                          InstanceId="i-0abc")
    boto3.client("cloudformation").signal_resource(
        StackName="web", LogicalResourceId="WebGroup", UniqueId="i-0abc", Status="SUCCESS")
    [complete] = aws_query.calls_for("CompleteLifecycleAction")
    assert complete["params"] == {"LifecycleHookName": "boot", "AutoScalingGroupName": "web",
                                  "LifecycleActionResult": "CONTINUE", "InstanceId": "i-0abc"}
    assert (complete["service"], complete["version"], complete["status"]) == (
        "autoscaling", "2011-01-01", 200)
    [signal] = aws_query.calls_for("SignalResource")
    assert signal["service"] == "cloudformation" and signal["params"]["Status"] == "SUCCESS"
    assert len(aws_query.calls_for("RecordLifecycleActionHeartbeat")) == 1


def test_query_fail_next_gives_client_error_then_success(aws_query: FakeAwsQuery) -> None:
    asg = boto3.client("autoscaling", config=NO_RETRY)
    aws_query.fail_next("CompleteLifecycleAction", 1)
    with pytest.raises(ClientError) as info:
        asg.complete_lifecycle_action(LifecycleHookName="boot", AutoScalingGroupName="web",
                                      LifecycleActionResult="ABANDON", InstanceId="i-0abc")
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert info.value.response["Error"]["Message"] == (
        "No active Lifecycle Action found with instance ID i-0abc")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    asg.complete_lifecycle_action(LifecycleHookName="boot", AutoScalingGroupName="web",
                                  LifecycleActionResult="ABANDON", InstanceId="i-0abc")
    assert [c["status"] for c in aws_query.calls_for("CompleteLifecycleAction")] == [400, 200]


BAD_STATUS: Any = "DONE"  # typed Any: the stubs would reject it, AWS does too


def test_query_validates_enums_like_aws(aws_query: FakeAwsQuery) -> None:
    with pytest.raises(ClientError, match="enum value set") as info:
        boto3.client("cloudformation").signal_resource(
            StackName="web", LogicalResourceId="WebGroup", UniqueId="i-0abc", Status=BAD_STATUS)
    assert info.value.response["Error"]["Code"] == "ValidationError"


def test_query_relays_other_actions_to_moto(aws_query: FakeAwsQuery) -> None:
    answer = boto3.client("autoscaling").describe_auto_scaling_instances()
    assert answer["AutoScalingInstances"] == []
    [call] = aws_query.calls_for("DescribeAutoScalingInstances")
    assert call["forwarded"] and call["status"] == 200


def test_query_without_upstream_rejects_unknown_action_and_goes_down() -> None:
    with FakeAwsQuery() as fake:
        asg = boto3.client("autoscaling", endpoint_url=fake.url, config=NO_RETRY, **KEYS)
        with pytest.raises(ClientError) as info:
            asg.describe_auto_scaling_groups()
        assert info.value.response["Error"]["Code"] == "InvalidAction"
        fake.down()
        with pytest.raises(EndpointConnectionError):
            asg.record_lifecycle_action_heartbeat(LifecycleHookName="h",
                                                  AutoScalingGroupName="g", InstanceId="i-1")
        fake.up()
        asg.record_lifecycle_action_heartbeat(LifecycleHookName="h", AutoScalingGroupName="g",
                                              InstanceId="i-1")
        assert [c["status"] for c in fake.calls] == [400, 200]


# -- FaultProxy in front of moto S3 --------------------------------------------------------------


@pytest.fixture
def s3_proxy(aws: AwsEnv, fault_proxy: FaultProxyFactory) -> FaultProxy:
    """A proxy before moto, with AWS_ENDPOINT_URL_S3 on it and bucket 'boot' holding 'big'."""
    aws.client("s3").create_bucket(Bucket="boot", CreateBucketConfiguration={
        "LocationConstraint": "eu-west-1"})
    aws.client("s3").put_object(Bucket="boot", Key="big", Body=bytes(range(256)) * 1024)
    return fault_proxy(env=S3_ENDPOINT_ENV)


def test_proxy_passes_s3_through_path_style(s3_proxy: FaultProxy) -> None:
    s3 = boto3.client("s3")
    assert s3.meta.endpoint_url == s3_proxy.url
    s3.put_object(Bucket="boot", Key="dir/play.yml", Body=b"- hosts: all\n")
    assert s3.head_object(Bucket="boot", Key="dir/play.yml")["ContentLength"] == 13
    assert s3.get_object(Bucket="boot", Key="dir/play.yml")["Body"].read() == b"- hosts: all\n"
    assert s3_proxy.requests == [ProxyRequest("PUT", "/boot/dir/play.yml"),
                                 ProxyRequest("HEAD", "/boot/dir/play.yml"),
                                 ProxyRequest("GET", "/boot/dir/play.yml")]


def test_proxy_slow_down_is_a_503_client_error_then_retried(s3_proxy: FaultProxy) -> None:
    s3_proxy.slow_down(1)
    with pytest.raises(ClientError) as info:
        boto3.client("s3", config=NO_RETRY).get_object(Bucket="boot", Key="big")
    assert info.value.response["Error"]["Code"] == "SlowDown"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    s3_proxy.slow_down(1)
    answer = boto3.client("s3").get_object(Bucket="boot", Key="big")
    assert answer["ResponseMetadata"]["RetryAttempts"] == 1
    assert len(answer["Body"].read()) == 256 * 1024


def test_proxy_reset_before_and_after_upstream(s3_proxy: FaultProxy, aws: AwsEnv) -> None:
    s3_proxy.reset_next(1)
    with pytest.raises(ConnectionClosedError):
        boto3.client("s3", config=NO_RETRY).put_object(Bucket="boot", Key="a", Body=b"1")
    with pytest.raises(ClientError):
        aws.client("s3").head_object(Bucket="boot", Key="a")  # never reached moto
    s3_proxy.reset_next(1, after_upstream=True)
    answer = boto3.client("s3").put_object(Bucket="boot", Key="b", Body=b"2")
    assert answer["ResponseMetadata"]["RetryAttempts"] == 1
    assert [kind for _, kind in s3_proxy.applied] == ["reset", "reset_after", "pass"]


def test_proxy_reset_is_a_tcp_rst_not_a_fin(s3_proxy: FaultProxy) -> None:
    s3_proxy.reset_next(1)
    port = int(s3_proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /boot/big HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            sock.recv(1)  # a FIN would return b"" instead


def test_proxy_truncated_body_is_detected_by_botocore(s3_proxy: FaultProxy) -> None:
    s3_proxy.truncate_next(1, after_bytes=1000)
    body = boto3.client("s3").get_object(Bucket="boot", Key="big")["Body"]
    with pytest.raises(ResponseStreamingError, match="IncompleteRead"):
        body.read()


def test_proxy_down_mid_download_breaks_the_stream(s3_proxy: FaultProxy) -> None:
    s3_proxy.throttle(64 * 1024)  # 256 KiB would take 4 s
    body = boto3.client("s3").get_object(Bucket="boot", Key="big")["Body"]
    assert len(body.read(1024)) == 1024
    s3_proxy.down()
    with pytest.raises(ResponseStreamingError):
        body.read()
    s3_proxy.throttle(None)
    s3_proxy.up()
    assert len(boto3.client("s3").get_object(Bucket="boot", Key="big")["Body"].read()) == 256 * 1024


def test_proxy_throttle_paces_the_body(s3_proxy: FaultProxy) -> None:
    s3_proxy.throttle(1024 * 1024)  # 256 KiB at 1 MiB/s
    started = time.monotonic()
    data = boto3.client("s3").get_object(Bucket="boot", Key="big")["Body"].read()
    assert len(data) == 256 * 1024
    assert time.monotonic() - started >= 0.25  # the last slice leaves at 256 KiB / rate


def test_proxy_stall_holds_only_its_prefix_and_ends_with_the_proxy(s3_proxy: FaultProxy) -> None:
    s3_proxy.stall("/boot/slow/", 60)
    s3 = boto3.client("s3", config=Config(read_timeout=1, retries={"max_attempts": 1}))
    s3.put_object(Bucket="boot", Key="fast/x", Body=b"x")  # another prefix: not held
    with pytest.raises(ReadTimeoutError):
        s3.put_object(Bucket="boot", Key="slow/x", Body=b"x")
    started = time.monotonic()
    s3_proxy.stop()  # ends the held request's wait instead of leaving it for 60 s
    assert time.monotonic() - started < 30
