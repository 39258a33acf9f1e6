"""Readiness signals: tell Auto Scaling, CloudFormation and the instance's tags how the run went.

Each kind is a :class:`Readiness` subclass in :data:`REGISTRY`, keyed by name:

* ``tags``: ``CreateTags`` ``pullboot:status``, ``pullboot:revision``,
  ``pullboot:run-id`` on the instance, after every run (``signals.tags``).
* ``cloudformation``: ``SignalResource`` SUCCESS/FAILURE (``signals.cloudformation``);
  stack and logical id from ``signals.cfn_stack`` / ``signals.cfn_resource`` or
  the ``aws:cloudformation:*`` tags.
* ``lifecycle``: ``CompleteLifecycleAction`` CONTINUE on success,
  ``signals.on_failure`` (ABANDON) otherwise, with ``RecordLifecycleActionHeartbeat``
  every ``signals.heartbeat_interval`` seconds while the run lasts; hook from
  ``signals.lifecycle_hook``, group from ``signals.lifecycle_group``, the
  ``aws:autoscaling:groupName`` tag or ``DescribeAutoScalingInstances``.

CloudFormation and lifecycle signals answer the launch of an instance, so they
are sent by the first run of each boot only (``once_per_boot``); later runs of
the same boot (the timer) would only meet "cannot be signaled" errors.

Every ``signals.*`` setting is resolved like any other (:mod:`pullboot.config`):
an instance tag ``pullboot:signals.<name>`` may set one only where the trust
policy allows it (``trust.tags``); signal targets are launch decisions.

Contract: :meth:`Readiness.send` never raises; a failure is a
:class:`SignalResult` with ``ok=False`` that the caller logs and reports.
Throttling, 5xx and connection errors are retried by botocore (standard
mode, see :mod:`pullboot.aws`); the only retry added here is the window for
"No active Lifecycle Action found", which botocore does not retry: the
shared :func:`pullboot.retry.retry` within ``signals.budget``, ended at once
by SIGTERM.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Final

from pullboot.config import Settings
from pullboot.identity import Identity
from pullboot.retry import Backoff, Deadline, retry

log = logging.getLogger(__name__)

TAG_PREFIX: Final = "pullboot:"
ASG_TAG: Final = "aws:autoscaling:groupName"
CFN_STACK_TAG: Final = "aws:cloudformation:stack-name"
CFN_RESOURCE_TAG: Final = "aws:cloudformation:logical-id"
NO_ACTIVE_ACTION: Final = "No active Lifecycle Action found"
_MAX_TAG_VALUE: Final = 256
_LIFECYCLE_BACKOFF: Final = Backoff(base=0.5, cap=10.0)


@dataclass(frozen=True)
class Outcome:
    """How the run ended, as the signals need it."""

    run_id: str
    status: str
    ok: bool
    revision: str | None


@dataclass(frozen=True)
class SignalResult:
    """One signal's fate; ``as_dict`` goes into the report's ``signals`` list."""

    kind: str
    ok: bool
    detail: str
    attempts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PlanContext:
    """What planning a signal may look at; remembers tags read through the EC2 API."""

    settings: Settings
    identity: Identity
    _api_tags: dict[str, str] | None = field(default=None, repr=False)

    def instance_tag(self, key: str) -> str | None:
        """An instance tag (``aws:*`` included), from IMDS or else ``ec2:DescribeTags``."""
        if key in self.identity.tags:
            return self.identity.tags[key]
        if self.identity.tags_from == "ec2-api" or not self.identity.instance_id:
            return None
        if self._api_tags is None:
            from pullboot import aws
            from pullboot.errors import IdentityError

            try:
                self._api_tags = aws.describe_instance_tags(
                    self.identity.instance_id, region=self.identity.region or "")
            except IdentityError as exc:
                log.debug("instance tags through the EC2 API: %s", exc.message)
                self._api_tags = {}
        return self._api_tags.get(key)


class Readiness(ABC):
    """One kind of readiness signal. Subclasses register with :func:`register`."""

    kind: ClassVar[str]
    once_per_boot: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def plan(cls, ctx: PlanContext) -> Readiness | None:
        """The signal to send for this instance, or None when it is not configured.

        Called before the fetch, so that a bad setting fails the run up front
        (ConfigError) and heartbeats can start.
        """

    def start(self, cancel: threading.Event) -> None:  # noqa: B027 - optional hook
        """Begin background work (heartbeats) while the run lasts."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """End background work; idempotent."""

    @abstractmethod
    def send(self, outcome: Outcome, cancel: threading.Event) -> SignalResult:
        """Send the final signal; never raises."""


REGISTRY: Final[dict[str, type[Readiness]]] = {}


def register(cls: type[Readiness]) -> type[Readiness]:
    REGISTRY[cls.kind] = cls
    return cls


class Unsendable(Readiness):
    """A signal that is configured but cannot be sent (e.g. no Auto Scaling group)."""

    kind = "unsendable"

    def __init__(self, kind: str, reason: str) -> None:
        self.name = kind
        self.reason = reason

    @classmethod
    def plan(cls, ctx: PlanContext) -> Readiness | None:
        return None

    def send(self, outcome: Outcome, cancel: threading.Event) -> SignalResult:
        return SignalResult(self.name, False, self.reason)


def plan_all(ctx: PlanContext, *, boot_run: bool) -> list[Readiness]:
    """Every configured signal, in registry order; once-per-boot kinds only on a boot run."""
    planned: list[Readiness] = []
    for kind, cls in REGISTRY.items():
        if cls.once_per_boot and not boot_run:
            log.debug("signal %s: already sent during this boot", kind)
            continue
        signal = cls.plan(ctx)
        if signal is not None:
            planned.append(signal)
    return planned


def send_all(planned: list[Readiness], outcome: Outcome,
             cancel: threading.Event) -> list[SignalResult]:
    """Stop background work, then send each signal; one line logged per signal."""
    for signal in planned:
        signal.stop()
    results = []
    for signal in planned:
        result = signal.send(outcome, cancel)
        if result.ok:
            log.info("signal %s: %s", result.kind, result.detail)
        else:
            log.warning("signal %s failed: %s", result.kind, result.detail)
        results.append(result)
    return results


def _aws_call(call: Callable[[], Any]) -> str | None:
    """Run one AWS call; None on success, else a one-line error ("Code: message")."""
    from botocore.exceptions import ClientError

    from pullboot import aws

    try:
        call()
    except ClientError as exc:
        err = exc.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', exc)}"
    except aws.CALL_ERRORS as exc:
        return aws.describe_failure(exc)
    return None


@register
class TagSignal(Readiness):
    """``pullboot:status``, ``pullboot:revision`` and ``pullboot:run-id`` instance tags."""

    kind = "tags"

    def __init__(self, instance_id: str, region: str | None) -> None:
        self.instance_id = instance_id
        self.region = region

    @classmethod
    def plan(cls, ctx: PlanContext) -> Readiness | None:
        if not ctx.settings.get("signals.tags"):
            return None
        if not ctx.identity.instance_id:
            return Unsendable(cls.kind, "no instance id (IMDS disabled or unreadable)")
        return cls(ctx.identity.instance_id, ctx.identity.region)

    def send(self, outcome: Outcome, cancel: threading.Event) -> SignalResult:
        from pullboot import aws

        tags = {"pullboot:status": outcome.status, "pullboot:revision": outcome.revision or "-",
                "pullboot:run-id": outcome.run_id}
        ec2 = aws.client("ec2", region=self.region)
        error = _aws_call(lambda: ec2.create_tags(
            Resources=[self.instance_id],
            Tags=[{"Key": k, "Value": v[:_MAX_TAG_VALUE]} for k, v in tags.items()]))
        if error:
            return SignalResult(self.kind, False, f"CreateTags on {self.instance_id}: {error}", 1)
        return SignalResult(self.kind, True, f"tagged {self.instance_id} "
                            f"pullboot:status={outcome.status}", 1)


@register
class CloudFormationSignal(Readiness):
    """CloudFormation ``SignalResource`` for the resource that created this instance."""

    kind = "cloudformation"
    once_per_boot = True

    def __init__(self, stack: str, resource: str, instance_id: str, region: str | None) -> None:
        self.stack, self.resource = stack, resource
        self.instance_id, self.region = instance_id, region

    @classmethod
    def plan(cls, ctx: PlanContext) -> Readiness | None:
        if not ctx.settings.get("signals.cloudformation"):
            return None
        if not ctx.identity.instance_id:
            return Unsendable(cls.kind, "no instance id (IMDS disabled or unreadable)")
        stack = ctx.settings.get("signals.cfn_stack") or ctx.instance_tag(CFN_STACK_TAG)
        resource = (ctx.settings.get("signals.cfn_resource")
                    or ctx.instance_tag(CFN_RESOURCE_TAG))
        if not stack or not resource:
            return Unsendable(cls.kind, f"stack or logical id unknown: set signals.cfn_stack "
                              f"and signals.cfn_resource, or keep the {CFN_STACK_TAG} and "
                              f"{CFN_RESOURCE_TAG} tags")
        log.info("signal cloudformation: stack %s, resource %s", stack, resource)
        return cls(stack, resource, ctx.identity.instance_id, ctx.identity.region)

    def send(self, outcome: Outcome, cancel: threading.Event) -> SignalResult:
        from pullboot import aws

        status = "SUCCESS" if outcome.ok else "FAILURE"
        cfn = aws.client("cloudformation", region=self.region)
        error = _aws_call(lambda: cfn.signal_resource(
            StackName=self.stack, LogicalResourceId=self.resource,
            UniqueId=self.instance_id, Status=status))
        what = f"{status} for {self.resource} in stack {self.stack}"
        if error:
            return SignalResult(self.kind, False, f"{what}: {error}", 1)
        return SignalResult(self.kind, True, f"sent {what}", 1)


@register
class LifecycleSignal(Readiness):
    """Auto Scaling lifecycle hook: heartbeats while running, then CONTINUE or ABANDON."""

    kind = "lifecycle"
    once_per_boot = True

    def __init__(self, *, hook: str, group: str, instance_id: str, region: str | None,
                 on_failure: str, heartbeat_s: float, budget_s: float) -> None:
        self.hook, self.group, self.instance_id, self.region = hook, group, instance_id, region
        self.on_failure = on_failure
        self.heartbeat_s = heartbeat_s
        self.budget_s = budget_s
        self.heartbeats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def plan(cls, ctx: PlanContext) -> Readiness | None:
        hook = ctx.settings.get("signals.lifecycle_hook")
        if not hook:
            return None
        instance_id = ctx.identity.instance_id
        if not instance_id:
            return Unsendable(cls.kind, "no instance id (IMDS disabled or unreadable)")
        group = (ctx.settings.get("signals.lifecycle_group") or ctx.instance_tag(ASG_TAG)
                 or _group_from_api(instance_id, ctx.identity.region))
        if not group:
            return Unsendable(cls.kind, f"instance {instance_id} is in no Auto Scaling group "
                              f"(no {ASG_TAG} tag; set signals.lifecycle_group)")
        log.info("signal lifecycle: hook %s (from %s), group %s", hook,
                 ctx.settings.origin("signals.lifecycle_hook"), group)
        return cls(hook=hook, group=group, instance_id=instance_id,
                   region=ctx.identity.region,
                   on_failure=ctx.settings.get("signals.on_failure"),
                   heartbeat_s=ctx.settings.get("signals.heartbeat_interval"),
                   budget_s=ctx.settings.get("signals.budget"))

    def _ids(self) -> dict[str, str]:
        return {"LifecycleHookName": self.hook, "AutoScalingGroupName": self.group,
                "InstanceId": self.instance_id}

    def start(self, cancel: threading.Event) -> None:
        if self.heartbeat_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._beat, name="lifecycle-heartbeat",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        from pullboot import aws

        asg = aws.client("autoscaling", region=self.region)
        warned = False
        while not self._stop.wait(self.heartbeat_s):
            error = _aws_call(lambda: asg.record_lifecycle_action_heartbeat(**self._ids()))
            if error is None:
                self.heartbeats += 1
                log.debug("lifecycle heartbeat %d sent", self.heartbeats)
            elif not warned:  # one line, not one per interval
                log.warning("lifecycle heartbeat failed: %s", error)
                warned = True

    def send(self, outcome: Outcome, cancel: threading.Event) -> SignalResult:
        from pullboot import aws

        result = "CONTINUE" if outcome.ok else self.on_failure
        # Socket timeouts fit the window, so one hung call cannot outlast it.
        asg = aws.client("autoscaling", region=self.region, within=self.budget_s)
        what = f"{result} for hook {self.hook} of group {self.group}"
        deadline = Deadline.after(self.budget_s, cancel=cancel)
        attempts = 0

        def attempt(n: int) -> None:
            nonlocal attempts
            attempts = n
            error = _aws_call(lambda: asg.complete_lifecycle_action(
                LifecycleActionResult=result, **self._ids()))
            if error is not None:
                raise _SignalFailed(error)

        try:
            # The action may not be registered yet this early in the boot (or the
            # hook is not active at all): retry within the window, then give up.
            retry(attempt, deadline=deadline, backoff=_LIFECYCLE_BACKOFF, level=logging.INFO,
                  what=f"lifecycle {what}",
                  retryable=lambda e: isinstance(e, _SignalFailed) and NO_ACTIVE_ACTION in str(e))
        except _SignalFailed as exc:
            if deadline.canceled():
                return SignalResult(self.kind, False, f"{result}: canceled while waiting for "
                                    "an active lifecycle action", attempts)
            return SignalResult(self.kind, False, f"{what}: {exc}", attempts)
        beats = f" after {self.heartbeats} heartbeat(s)" if self.heartbeats else ""
        return SignalResult(self.kind, True, f"{what}{beats}", attempts)


class _SignalFailed(Exception):
    """One failed AWS call of a signal, as its one-line error."""


def _group_from_api(instance_id: str, region: str | None) -> str | None:
    """The instance's Auto Scaling group from ``DescribeAutoScalingInstances``, if any."""
    from botocore.exceptions import ClientError

    from pullboot import aws

    try:
        found = aws.client("autoscaling", region=region).describe_auto_scaling_instances(
            InstanceIds=[instance_id]).get("AutoScalingInstances", [])
    except ClientError as exc:
        log.warning("could not look up the Auto Scaling group of %s: %s", instance_id, exc)
        return None
    except aws.CALL_ERRORS as exc:
        log.warning("could not look up the Auto Scaling group of %s: %s", instance_id,
                    aws.describe_failure(exc))
        return None
    return str(found[0]["AutoScalingGroupName"]) if found else None
