"""The service the MCP tools and the CLI call: the lifecycle part and the delegation part, wired to
one owner of live state.

    BottleService (this module)   composes the two parts below over one LiveBottles
    ├── Lifecycle (lifecycle.py)  plans, launch, exec, cp_in, stop, logs, cleanup, shutdown
    └── Delegation (delegate.py)  agent runs, background jobs, copies out, commits, diffs
        both given LiveBottles (live.py): each bottle, its plan, origin and jobs

Neither part imports the other; this module is the only place that knows both.
"""

from __future__ import annotations

from .backends.base import Backend
from .delegate import Delegation
from .lifecycle import MAX_PLANS, SHUTDOWN_BUDGET_S, Lifecycle, ServiceConfig
from .models import ExecResult

__all__ = ["MAX_PLANS", "SHUTDOWN_BUDGET_S", "BottleService", "ServiceConfig"]


class BottleService(Lifecycle):
    """The lifecycle operations, plus `delegate` for handing work to a bottle and bringing it back."""

    def __init__(self, config: ServiceConfig, backend: Backend) -> None:
        super().__init__(config, backend)
        self.delegate = Delegation(
            self.live,
            output_cap=lambda: self.output_cap,
            host_roots=self.host_roots,
            keeps_exec=lambda root: self.manifest.keeps_exec(root),  # noqa: PLW0108 - the manifest is reloaded
            redact=self.redactor.text,
            call_output_cap=self.call_output_cap,
        )

    async def exec(
        self,
        bottle_id: str,
        command: str,
        *,
        timeout_s: float = 60,
        workdir: str | None = None,
        background: bool = False,
        output_cap: int | None = None,
    ) -> ExecResult:
        """Run a command and wait for it, or, with `background`, start it as a job and return at once."""
        if background:
            job = await self.delegate.exec_background(bottle_id, command, timeout_s=timeout_s, workdir=workdir)
            return ExecResult.started_in_background(job)
        return await super().exec(bottle_id, command, timeout_s=timeout_s, workdir=workdir, output_cap=output_cap)
