"""The MCP tools. Each one validates its arguments, calls the service and returns a model.

Nothing here decides policy: that is the manifest's, applied by the service.
Errors the supervising agent must act on come back as tool errors whose text
says what went wrong and what to call instead.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, ParamSpec, TypeVar

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from . import __version__
from .errors import BottleError
from .models import (
    BottleInfo,
    BottlePlan,
    CleanupReport,
    CopyResult,
    ExecResult,
    LaunchResult,
    StopResult,
)
from .service import BottleService

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

INSTRUCTIONS = """\
bottle-mcp runs sub-agents in sandboxed containers ("bottles") under a policy a human wrote (the manifest).
Typical flow: prepare_bottle(agent) -> review the plan -> launch_bottle(plan_id) -> exec / cp_in ->
stop_bottle(bottle_id). list_active shows every bottle; cleanup removes what crashed servers left behind.
You cannot widen what the manifest allows: image, network, mounts, credentials and limits come from it."""

BottleId = Annotated[str, Field(description="The bottle_id returned by launch_bottle.", max_length=64)]


class ActiveBottles(BaseModel):
    bottles: list[BottleInfo]
    this_server: str = Field(description="This server's instance id; bottles with owner 'this-server' are yours.")


def _tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn the project's errors into tool errors with their full message."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except BottleError as e:
            raise ToolError(str(e)) from e

    return wrapper


def build_server(service: BottleService) -> MCPServer[BottleService]:
    @asynccontextmanager
    async def lifespan(_server: MCPServer[BottleService]) -> AsyncIterator[BottleService]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(service.keep_warm)
            try:
                yield service
            finally:
                tg.cancel_scope.cancel()  # the pools remove their spares while the bottles are removed
                await service.aclose()

    mcp: MCPServer[BottleService] = MCPServer(
        name="bottle-mcp",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
    )

    @mcp.tool(
        title="Prepare a bottle (preflight)",
        annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False),
    )
    @_tool_errors
    async def prepare_bottle(
        agent: Annotated[str, Field(description="Agent name from the manifest's [agents] tables.", max_length=64)],
        copy_cwd: Annotated[
            bool,
            Field(description="Also copy the server's git repository (.git, checked out) into the workspace."),
        ] = False,
    ) -> BottlePlan:
        """Validate a manifest agent into a launch plan and return it for review. Creates nothing.

        The plan lists image, runtime, user, capabilities, mounts, network and egress, resources,
        skills, credentials (names only), SSH and git upstreams, and warnings. Read the warnings,
        then call launch_bottle with the plan_id. Plans are kept in memory only.
        """
        return await service.prepare(agent, copy_cwd=copy_cwd)

    @mcp.tool(
        title="Launch a bottle",
        annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False),
    )
    @_tool_errors
    async def launch_bottle(
        plan_id: Annotated[str, Field(description="plan_id from prepare_bottle.", max_length=64)],
        ctx: Context,
    ) -> LaunchResult:
        """Start the bottle a plan describes and provision its prompt, skills and files.

        Returns bottle_id (use it with exec, cp_in, stop_bottle), status and the runtime that runs it.
        Sends progress notifications while it works (usually well under a few seconds). Refuses when
        the manifest changed since the plan was made: prepare again then.
        """
        step = 0

        async def progress(message: str) -> None:
            nonlocal step
            step += 1
            await ctx.report_progress(step, 7, message)

        return await service.launch(plan_id, progress)

    @mcp.tool(
        name="exec",
        title="Run a command in a bottle",
        annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=False),
    )
    @_tool_errors
    async def exec_(
        bottle_id: BottleId,
        command: Annotated[
            str,
            Field(description="Shell command, run with /bin/sh -c as the bottle's user.", max_length=131072),
        ],
        timeout_s: Annotated[
            float,
            Field(description="Seconds before the command is killed (its whole process group).", gt=0, le=3600),
        ] = 60,
        workdir: Annotated[
            str | None,
            Field(description="Absolute folder to run in; default: the workspace.", max_length=4096),
        ] = None,
    ) -> ExecResult:
        """Run a shell command in a bottle and return exit_code, stdout, stderr and timing.

        A non-zero exit is data, not an error. Output is capped per stream (truncated=true says so,
        with the full byte counts); control characters come back as \\xNN. On timeout, or when this
        call is cancelled, the command's processes inside the bottle are killed.
        Keep calls under about a minute: agent hosts time out long tool calls.
        """
        return await service.exec(bottle_id, command, timeout_s=timeout_s, workdir=workdir)

    @mcp.tool(
        title="Copy host files into a bottle",
        annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True),
    )
    @_tool_errors
    async def cp_in(
        bottle_id: BottleId,
        host_path: Annotated[
            str, Field(description="File or folder on the host, under the allowed roots.", max_length=4096)
        ],
        bottle_path: Annotated[
            str,
            Field(description="Absolute destination path in the bottle, e.g. /workspace/data.", max_length=4096),
        ],
    ) -> CopyResult:
        """Copy a host file or folder into a bottle; bottle_path becomes the copy's own path.

        Host paths must lie under the roots the human configured (by default the server's start
        folder); '..', symlinks that leave the root and look-alike prefixes are refused. Returns
        counts of files, folders, symlinks and bytes copied.
        """
        return await service.cp_in(bottle_id, host_path, bottle_path)

    @mcp.tool(
        title="Stop and remove a bottle",
        annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=False),
    )
    @_tool_errors
    async def stop_bottle(bottle_id: BottleId) -> StopResult:
        """Stop a bottle this server launched and remove it with its workspace. Its files are lost."""
        return await service.stop(bottle_id)

    @mcp.tool(
        title="List live bottles",
        annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False),
    )
    @_tool_errors
    async def list_active() -> ActiveBottles:
        """List every bottle on this backend, including other servers' (marked by owner).

        owner: 'this-server' (yours to drive), 'other-server' (a live server's), 'orphaned' (its
        server is gone: cleanup removes it), 'unknown' (made on another host).
        """
        return ActiveBottles(bottles=await service.list_active(), this_server=service.instance.id)

    @mcp.tool(
        title="Remove leftovers of crashed servers",
        annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True),
    )
    @_tool_errors
    async def cleanup(
        dry_run: Annotated[bool, Field(description="Only list what would be removed.")] = False,
    ) -> CleanupReport:
        """Remove bottles, volumes and networks left by server instances that are no longer running.

        Live servers' bottles (including this one's) are never touched. With dry_run=true,
        'removed' lists what would go.
        """
        return await service.cleanup(dry_run=dry_run)

    return mcp
