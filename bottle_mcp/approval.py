"""A person approves what a bottle may do before it launches.

The human who runs the server sets the policy: `[host] approve` in the manifest, or
`bottle-mcp serve --approve`, which wins. Never a tool argument: the supervising agent
cannot lower it.

    never     launch without asking
    always    ask before every launch
    elevated  ask only when the plan grants more than the offline default (see `elevations`)

When the policy asks, `launch_bottle` puts the plan to the person through the MCP client
(elicitation) before its body runs. The SDK's resolvers carry the question in both protocol
eras: a standalone `elicitation/create` request in the handshake era, an `InputRequiredResult`
the client answers and retries with from 2026-07-28 on. Two resolvers split the work:
`decide_launch` works out whether to ask (it never talks to the client), and `ask_person`
asks only when the decision says so, so a bottle that needs no approval launches on clients
without elicitation support, in both eras.

An approval binds to one plan: its id, its content digest and the manifest's sha256 are in
the question, and the launch goes ahead only when the plan is still exactly that one (the
service re-derives it from the manifest and the files it names). Every decision is appended
to a JSON-lines log the human can read; it never holds secret values, only names.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import (
    AcceptedElicitation,
    CancelledElicitation,
    Context,
    DeclinedElicitation,
    Elicit,
    ElicitationResult,
    Resolve,
)
from pydantic import BaseModel, Field

from .errors import ApprovalError, BottleError
from .manifest import ApprovePolicy, LoadedManifest, format_size
from .models import BottlePlan, LaunchResult
from .preapprove import PreApprovals, preapprovals_path
from .service import BottleService

log = logging.getLogger(__name__)

LOG_NAME = "approvals.jsonl"
ENV_LOG = "BOTTLE_MCP_APPROVALS_LOG"
INSTANT_S = 1.0  # a cancel faster than this came from the client, not from a person


def default_log_path() -> Path:
    """$BOTTLE_MCP_APPROVALS_LOG, else $XDG_STATE_HOME/bottle-mcp/approvals.jsonl, else ~/.local/state/..."""
    env = os.environ.get(ENV_LOG)
    if env:
        return Path(env).expanduser()
    return _state_dir() / LOG_NAME


def _state_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "bottle-mcp"


# -- what counts as "more than the offline default" ---------------------------------------


def elevations(plan: BottlePlan) -> list[str]:
    """What this plan grants beyond the offline default, one readable line each; empty when nothing.

    The offline default: no network, no SSH or git upstreams, no credentials, no host paths mounted
    or copied besides the manifest's prompt and skills, a read-only root file system, every
    capability dropped with no-new-privileges, and the runtime `auto` picks. Runtime: pinning
    `runtime = "runc"` counts (it opts out of gVisor on every engine, including ones that have
    it), as does a plan whose effective runtime is not the runsc it requested. `auto` resolving to
    runc on an engine without gVisor does not count: that is the default on such an engine, and
    the plan says so in its warnings.
    """
    out: list[str] = []
    if plan.network.mode != "none":
        hosts = ", ".join(plan.network.egress_allow) or "(no hosts listed)"
        out.append(f"network egress to {hosts}")
        out += [f"egress may reach the non-public destination {r} (allow_private)" for r in plan.network.allow_private]
    out += [f"SSH to {s.user}@{s.hostname}:{s.port} (as '{s.host}')" for s in plan.ssh]
    out += [f"git push to {g.upstream} (as remote '{g.name}')" for g in plan.git]
    for c in plan.credentials:
        if c.in_bottle == "real value":
            out.append(f"credential {c.name} enters the bottle with its real value")
        elif c.substituted_for:
            out.append(
                f"credential {c.name} is used for {', '.join(c.substituted_for)} (the bottle holds a stand-in; "
                "the proxy adds the real value)"
            )
        else:
            out.append(f"credential {c.name} is forwarded (as a stand-in that no host accepts)")
    if plan.copy_cwd is not None:
        out.append(f"copies the host repository {plan.copy_cwd.host_repo} (its .git) into the bottle")
    out += [f"mounts host path {p}" for p in plan.host_mounts]
    rt = plan.runtime
    if rt.requested == "runc":
        out.append("runtime pinned to runc: no gVisor, the bottle shares the host kernel")
    elif rt.requested == "runsc" and rt.effective != "runsc":
        out.append(f"runtime {rt.effective} although runsc was requested")
    if not plan.read_only_root:
        out.append("writable root file system (read_only_root = false)")
    if plan.capabilities_added:
        out.append("adds capabilities " + ", ".join(plan.capabilities_added))
    if not plan.no_new_privileges:
        out.append("allows gaining privileges (no-new-privileges off)")
    return out


# -- the decision, made before anything is asked ---------------------------------------------


@dataclass(frozen=True)
class LaunchDecision:
    """Whether launching a plan needs a person's approval, and the question they would see."""

    plan_id: str
    digest: str
    manifest_sha256: str
    policy: ApprovePolicy
    policy_source: str
    reasons: tuple[str, ...]
    required: bool
    question: str
    plan: BottlePlan
    ahead: str | None = None  # how a person approved this launch ahead (then nobody is asked now)


def effective_policy(override: ApprovePolicy | None, manifest: LoadedManifest) -> tuple[ApprovePolicy, str]:
    """The policy in force and where it comes from; the command line wins over the manifest."""
    if override is not None:
        return override, "the server's command line (--approve)"
    host = manifest.manifest.host
    where = "set in" if "approve" in host.model_fields_set else "the default of"
    return host.approve, f"{where} [host] approve in {manifest.path}"


def decide(
    plan: BottlePlan, manifest: LoadedManifest, override: ApprovePolicy | None, ahead: str | None = None
) -> LaunchDecision:
    policy, source = effective_policy(override, manifest)
    reasons = tuple(elevations(plan))
    required = policy == "always" or (policy == "elevated" and bool(reasons))
    if required and ahead is None and plan.agent in manifest.manifest.host.approved_agents:
        ahead = f"agent '{plan.agent}' is listed in [host] approved_agents of {manifest.path}"
    return LaunchDecision(
        plan_id=plan.plan_id,
        digest=plan.digest,
        manifest_sha256=plan.manifest_sha256,
        policy=policy,
        policy_source=source,
        reasons=reasons,
        required=required,
        question=render_question(plan, policy, reasons),
        plan=plan,
        ahead=ahead if required else None,
    )


def render_question(plan: BottlePlan, policy: ApprovePolicy, reasons: tuple[str, ...]) -> str:
    """The plan in a short form a person can read before saying yes. Names only, never secret values."""
    net = plan.network
    if net.mode == "none":
        network = "none"
    else:
        network = f"{net.mode} to {', '.join(net.egress_allow) or '(no hosts)'} (enforced now: {net.effective})"
    upstreams = [f"ssh '{s.host}' -> {s.user}@{s.hostname}:{s.port}" for s in plan.ssh]
    upstreams += [f"git '{g.name}' -> {g.upstream}" for g in plan.git]
    creds = [f"{c.name} ({c.in_bottle + ' in the bottle' if c.present else 'not set'})" for c in plan.credentials]
    copies = []
    if plan.prompt is not None:
        copies.append(f"prompt ({format_size(plan.prompt.bytes, approx=True)})")
    copies += [f"skill {s.name} ({s.files} files, {format_size(s.bytes, approx=True)})" for s in plan.skills]
    if plan.copy_cwd is not None:
        cc = plan.copy_cwd
        copies.append(f"repository {cc.host_repo} (.git: {cc.files} files, {format_size(cc.bytes, approx=True)})")
    copies += [f"host mount {p}" for p in plan.host_mounts]
    res = plan.resources
    rt = plan.runtime
    lines = [
        f"Approve launching bottle '{plan.bottle}' for agent '{plan.agent}'?",
        f"  image:       {plan.image}",
        f"  runtime:     {rt.effective} (requested {rt.requested}: {rt.reason})",
        f"  network:     {network}",
        f"  upstreams:   {'; '.join(upstreams) or 'none'}",
        f"  credentials: {', '.join(creds) or 'none'}",
        f"  host copies: {'; '.join(copies) or 'none'}",
        f"  resources:   {res.cpus:g} CPU, {res.memory} memory, {res.pids} processes",
        f"  root fs:     {'read-only' if plan.read_only_root else 'WRITABLE'}",
    ]
    if reasons:
        lines.append("More than the offline default:")
        lines += [f"  - {r}" for r in reasons]
    elif policy == "always":
        lines.append("Nothing beyond the offline default; asked because approve = 'always'.")
    lines.append(
        f"Plan {plan.plan_id}, digest {plan.digest}, manifest {plan.manifest} (sha256 {plan.manifest_sha256[:16]})."
    )
    lines.append("Tick 'approve' and accept to launch exactly this plan; decline to refuse it.")
    return "\n".join(lines)


class ApprovalForm(BaseModel):
    """What the person fills in: one box, ticked on purpose."""

    approve: bool = Field(
        default=False,
        title="Approve this launch",
        description="Tick to launch exactly the plan shown; leave it unticked to refuse.",
    )


def approval_note(plan: BottlePlan, manifest: LoadedManifest, override: ApprovePolicy | None) -> str:
    """One sentence or three for the plan: is a person asked before it launches, and how to approve ahead."""
    ahead = None
    if PreApprovals(preapprovals_path()).holds(plan.digest):
        ahead = f"plan digest {plan.digest} was approved ahead with `bottle-mcp approve`"
    d = decide(plan, manifest, override, ahead)
    if not d.required:
        why = "it grants nothing beyond the offline default" if d.policy == "elevated" else "approve = 'never'"
        return f"No approval is needed to launch this plan ({why}; {d.policy_source})."
    if d.ahead is not None:
        return f"Approved ahead: {d.ahead}. It launches without a question; the launch is recorded."
    why = "; ".join(d.reasons) or "every launch is asked"
    return (
        f"Launching this plan needs a person's approval (approve = '{d.policy}': {why}). launch_bottle asks them "
        "through the client. For a host that cannot ask (such as `claude -p`), the person approves it ahead on "
        f"the server's machine with `bottle-mcp approve {d.digest}`, or lists agent '{plan.agent}' in [host] "
        "approved_agents of the manifest."
    )


# -- the record ------------------------------------------------------------------------------

Event = Literal["approved", "approved-ahead", "declined", "cancelled", "no-client-support", "launched", "launch-failed"]


class ApprovalLog:
    """Append-only JSON lines, one event per line, readable by the human (mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    async def record(
        self, event: Event, decision: LaunchDecision, instance: str, *, required: bool = True, **extra: Any
    ) -> None:
        """Append one event. When `required`, a failure to write refuses the launch (it has not started yet)."""
        plan = decision.plan
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "event": event,
            "server_instance": instance,
            "plan_id": plan.plan_id,
            "plan_digest": plan.digest,
            "manifest": plan.manifest,
            "manifest_sha256": plan.manifest_sha256,
            "policy": decision.policy,
            "policy_source": decision.policy_source,
            "agent": plan.agent,
            "bottle": plan.bottle,
            "image": plan.image,
            "runtime": plan.runtime.effective,
            "network": plan.network.mode,
            "egress_allow": list(plan.network.egress_allow),
            "upstreams": [f"{s.user}@{s.hostname}:{s.port}" for s in plan.ssh] + [g.upstream for g in plan.git],
            "credentials": [c.name for c in plan.credentials],
            "copy_cwd": plan.copy_cwd.host_repo if plan.copy_cwd else None,
            "reasons": list(decision.reasons),
            **extra,
        }
        line = json.dumps(entry, sort_keys=False) + "\n"
        try:
            await anyio.to_thread.run_sync(self._append, line)
        except OSError as e:
            if not required:
                log.warning("could not record %s for plan %s in %s: %s", event, plan.plan_id, self.path, e)
                return
            raise ApprovalError(
                f"the approval decision could not be recorded in {self.path} ({e.strerror}); nothing was "
                "launched. Fix the folder's permissions, or start the server with --approvals-log PATH"
            ) from None


# -- the resolvers launch_bottle declares -------------------------------------------------------


def _service(ctx: Context) -> BottleService:
    """The BottleService the server's lifespan yields."""
    service = ctx.request_context.lifespan_context
    assert isinstance(service, BottleService)
    return service


def approval_log(service: BottleService) -> ApprovalLog:
    return ApprovalLog(service.config.approvals_log or default_log_path())


async def decide_launch(plan_id: str, ctx: Context) -> LaunchDecision:
    """Resolver: whether this launch needs a person's approval. Talks to nobody; re-runs each round."""
    service = _service(ctx)
    plan, spec = service.stored_plan(plan_id)  # an unknown plan: the server maps the project's error
    ahead = None
    if await anyio.to_thread.run_sync(PreApprovals(preapprovals_path()).holds, plan.digest):
        ahead = f"plan digest {plan.digest} was approved ahead with `bottle-mcp approve`"
    return decide(plan, spec.manifest, service.config.approve, ahead)


def client_can_ask(ctx: Context) -> bool:
    """Whether the client declared form elicitation (a bare `elicitation: {}` counts as form)."""
    caps = ctx.client_capabilities
    elicitation = caps.elicitation if caps is not None else None
    return elicitation is not None and (elicitation.form is not None or elicitation.url is None)


async def ask_person(
    decision: Annotated[LaunchDecision, Resolve(decide_launch)], ctx: Context
) -> Elicit[ApprovalForm] | None:
    """Resolver: put the plan to the person, only when the decision says so."""
    if not decision.required or decision.ahead is not None:
        return None
    if not client_can_ask(ctx):
        service = _service(ctx)
        await approval_log(service).record("no-client-support", decision, service.instance.id)
        why = "; ".join(decision.reasons) or "every launch is asked"
        raise ApprovalError(
            f"Launching plan {decision.plan_id!r} needs a person's approval (approve = '{decision.policy}', "
            f"{decision.policy_source}; this plan: {why}), but this MCP client cannot ask its user: it did not "
            "declare the elicitation capability. Nothing was launched. "
            + how_to_approve_ahead(decision)
            + " Or the person can change the setting: [host] approve in the manifest, or "
            "`bottle-mcp serve --approve never|elevated|always` (the command line wins)."
        )
    # From 2026-07-28 on this resolver runs again when the client retries with the answer: keep the first time.
    key = (decision.plan_id, decision.digest)
    now = time.monotonic()
    if now - _asked_at.get(key, -1e9) > 600:
        _asked_at[key] = now
    return Elicit(decision.question, ApprovalForm)


_asked_at: dict[tuple[str, str], float] = {}


def how_to_approve_ahead(decision: LaunchDecision) -> str:
    return (
        "The person who runs the server can approve this exact plan ahead, without a question through the "
        f"client: `bottle-mcp approve {decision.digest}` on the server's machine, then call launch_bottle again "
        f"with plan_id {decision.plan_id!r}; or list agent '{decision.plan.agent}' in [host] approved_agents of "
        "the manifest."
    )


async def launch_approved(
    ctx: Context,
    decision: LaunchDecision,
    answer: ElicitationResult[ApprovalForm],
    launch: Callable[[str], Awaitable[LaunchResult]],
) -> LaunchResult:
    """Run `launch(approved_digest)` if no approval is needed or the person approved; record what happened."""
    service = _service(ctx)
    if not decision.required:
        return await launch(decision.digest)
    record = approval_log(service)
    instance = service.instance.id
    asked_at = _asked_at.pop((decision.plan_id, decision.digest), None)
    if decision.ahead is not None:
        if decision.ahead.startswith("plan digest"):
            taken = await anyio.to_thread.run_sync(PreApprovals(preapprovals_path()).take, decision.digest)
            if not taken:  # used by a concurrent launch, or expired since the decision
                raise ApprovalError(
                    f"The approval given ahead for plan digest {decision.digest} is no longer there (used or "
                    "expired). Nothing was launched. " + how_to_approve_ahead(decision)
                )
        await record.record("approved-ahead", decision, instance, how=decision.ahead)
    elif isinstance(answer, AcceptedElicitation) and answer.data.approve:
        await record.record("approved", decision, instance)
    else:
        plan = f"plan {decision.plan_id!r} (agent '{decision.plan.agent}')"
        if isinstance(answer, CancelledElicitation):
            event: Event = "cancelled"
            instant = asked_at is not None and time.monotonic() - asked_at < INSTANT_S
            if instant:
                message = (
                    f"The client cancelled the approval request (no person was asked) for {plan}. Nothing was "
                    "launched. This client answers every question at once with cancel (as Claude Code does in "
                    "-p mode). " + how_to_approve_ahead(decision)
                )
            else:
                message = (
                    f"The approval request for {plan} was dismissed without an answer. Nothing was launched. "
                    "Do not retry it unless the person asks you to."
                )
        else:
            event = "declined"
            how = "declined" if isinstance(answer, DeclinedElicitation) else "answered without ticking 'approve'"
            message = (
                f"The person {how} the launch of {plan}. Nothing was launched. Do not retry it unless they ask you to."
            )
        await record.record(event, decision, instance, **({"instant": True} if "no person" in message else {}))
        raise ApprovalError(message)
    try:
        result = await launch(decision.digest)
    except BottleError as e:
        await record.record("launch-failed", decision, instance, required=False, error=type(e).__name__)
        raise
    await record.record("launched", decision, instance, required=False, bottle_id=result.bottle_id)
    return result
