"""`bottle-mcp doctor`: can this server work here, and if not, what exactly to fix.

Each check gives a status, what it found and, unless it is ok, one fix. A check
that depends on an earlier one that failed is skipped, with the reason, instead
of piling up follow-on errors. The verdict is `broken` when the server could
not do its job (no engine, an invalid manifest, a missing image, ...),
`degraded` when it works with caveats, `ready` otherwise.
Credentials are reported by name only; their values are never read out.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from . import __version__
from .backends.base import Status
from .credentials import credential_plans
from .errors import BottleError
from .manifest import LoadedManifest, load_manifest

if TYPE_CHECKING:
    from .backends.base import Backend

Verdict = Literal["ready", "degraded", "broken"]


class Check(BaseModel):
    name: str = Field(description="What was checked, e.g. 'engine' or 'image offline'.")
    status: Status = Field(description="ok; warn (works, with a caveat); fail (blocks the server); skip.")
    detail: str = Field(description="What was found.")
    fix: str | None = Field(None, description="How to fix it; null when nothing needs doing.")


class DoctorReport(BaseModel):
    verdict: Verdict = Field(description="broken: the server cannot work; degraded: works with caveats; ready.")
    summary: str
    version: str = Field(description="bottle-mcp version.")
    backend: str
    manifest: str
    checks: list[Check]

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict == "broken" else 0


def _verdict(checks: list[Check]) -> Verdict:
    if any(c.status == "fail" for c in checks):
        return "broken"
    if any(c.status == "warn" for c in checks):
        return "degraded"
    return "ready"


class _Doctor:
    def __init__(
        self,
        manifest_path: Path,
        backend: Backend,
        *,
        cwd: Path,
        host_roots: list[Path] | None,
        environ: Mapping[str, str],
    ) -> None:
        self.manifest_path = manifest_path
        self.backend = backend
        self.cwd = cwd
        self.host_roots = host_roots
        self.environ = environ
        self.checks: list[Check] = []

    def add(self, name: str, status: Status, detail: str, fix: str | None = None) -> None:
        self.checks.append(Check(name=name, status=status, detail=detail, fix=fix if status != "ok" else None))

    # -- the checks ---------------------------------------------------------------------

    def check_manifest(self) -> LoadedManifest | None:
        try:
            lm = load_manifest(self.manifest_path)
        except BottleError as e:
            self.add(
                "manifest",
                "fail",
                str(e),
                "fix the problems listed (each names the file and the TOML key); `bottle-mcp init` writes a "
                "working starter manifest, and docs/manifest.md describes every key",
            )
            return None
        m = lm.manifest
        self.add(
            "manifest", "ok", f"{lm.path} is valid: {len(m.bottles)} bottle(s), agents {', '.join(sorted(m.agents))}"
        )
        return lm

    async def check_leftovers(self) -> None:
        try:
            plan = await self.backend.prepare_cleanup()
        except BottleError as e:
            self.add("leftovers", "warn", f"could not look for leftovers: {e}", "check the engine (above)")
            return
        if plan.remove:
            self.add(
                "leftovers",
                "warn",
                f"{len(plan.remove)} container(s), volume(s) or network(s) were left by servers that are gone",
                "run `bottle-mcp cleanup` (or call the cleanup tool); live servers' bottles are never touched",
            )
        else:
            live = sum(1 for i in plan.keep if i.kind == "container")
            self.add("leftovers", "ok", f"nothing left by crashed servers ({live} bottle(s) of live servers)")

    def check_host_roots(self, lm: LoadedManifest) -> None:
        if self.host_roots:
            roots, source = [r.resolve() for r in self.host_roots], "--host-root"
        else:
            roots = lm.host_roots(self.cwd)
            source = "[host] roots" if lm.manifest.host.roots else "the server's start folder (no [host] roots)"
        bad = [r for r in roots if not r.is_dir()]
        if bad:
            self.add(
                "host roots",
                "fail",
                f"{', '.join(map(str, bad))} (from {source}) is not a folder: cp_in cannot read anything there",
                "create the folder or fix [host] roots (relative paths start at the manifest's folder)",
            )
        else:
            self.add("host roots", "ok", f"cp_in may read below {', '.join(map(str, roots))} (from {source})")

    def check_skills(self, lm: LoadedManifest) -> None:
        skills_dir = lm.skills_dir()
        wanted = {s: a for a, agent in lm.manifest.agents.items() for s in agent.skills}
        if not wanted:
            self.add("skills", "ok", "no agent uses skills")
            return
        missing = sorted(s for s in wanted if not (skills_dir / s).is_dir())
        no_doc = sorted(s for s in wanted if (skills_dir / s).is_dir() and not (skills_dir / s / "SKILL.md").is_file())
        if missing:
            self.add(
                "skills",
                "fail",
                f"skill(s) {', '.join(missing)} not found in {skills_dir}; prepare_bottle refuses agents that use them "
                f"(e.g. {wanted[missing[0]]!r})",
                "create those folders (each with a SKILL.md), or set [host] skills_dir to where they are",
            )
        elif no_doc:
            self.add(
                "skills",
                "warn",
                f"skill folder(s) {', '.join(no_doc)} in {skills_dir} have no SKILL.md; agents may not pick them up",
                "add a SKILL.md describing each skill",
            )
        else:
            self.add("skills", "ok", f"{len(wanted)} skill(s) found in {skills_dir}")

    def check_credentials(self, lm: LoadedManifest) -> None:
        named = {c: a for a, agent in lm.manifest.agents.items() for c in agent.credentials}
        if not named:
            self.add("credentials", "ok", "no agent is given credentials")
            return
        absent = sorted(c for c in named if c not in self.environ)
        if absent:
            self.add(
                "credentials",
                "warn",
                f"{', '.join(absent)} named by the manifest are not set in this environment; "
                "their agents would run without them",
                "set them in the environment the agent host starts the server with (e.g. "
                f'`claude mcp add -e {absent[0]}=...` or an "env" entry in .mcp.json)',
            )
        else:
            refused, nowhere, real = self._credential_routes(lm)
            if refused:
                self.add(
                    "credentials",
                    "fail",
                    "; ".join(refused),
                    "remove those hosts from egress.passthrough, or list the credential in the bottle's "
                    "real_credentials (docs/manifest.md, Credentials)",
                )
            elif nowhere:
                self.add(
                    "credentials",
                    "warn",
                    f"{', '.join(nowhere)} have no hosts in egress.credentials: their bottles get stand-ins that no "
                    "host accepts",
                    "declare each credential's hosts in [bottles.NAME.egress.credentials], or list it in the "
                    "bottle's real_credentials if the bottle must use the value itself",
                )
            else:
                where = f"; real values enter bottles for {', '.join(real)}" if real else ""
                self.add(
                    "credentials",
                    "ok",
                    f"{', '.join(sorted(named))} present (values not shown); bottles hold stand-ins{where}",
                )

    def _credential_routes(self, lm: LoadedManifest) -> tuple[list[str], list[str], list[str]]:
        """Launch refusals, stand-ins that work nowhere, and credentials handed over with their real value."""
        refused: list[str] = []
        nowhere: list[str] = []
        real: list[str] = []
        for agent in lm.manifest.agents.values():
            bottle = lm.manifest.bottles.get(agent.bottle)
            if bottle is None:
                continue
            plans, _ = credential_plans(bottle, list(agent.credentials), self.environ)
            for c in plans:
                if c.refused and c.refused not in refused:
                    refused.append(c.refused)
                elif c.in_bottle == "real value" and c.name not in real:
                    real.append(c.name)
                elif c.in_bottle == "stand-in" and not c.substituted_for and c.name not in nowhere:
                    nowhere.append(c.name)
        return refused, nowhere, real

    # -- driver -------------------------------------------------------------------------

    async def run(self) -> DoctorReport:
        self.add(
            "install",
            "ok",
            f"bottle-mcp {__version__} on Python {sys.version.split()[0]} ({sys.executable})",
        )
        lm = self.check_manifest()
        found = await self.backend.diagnose(lm, self.environ)
        self.checks += [Check(name=d.name, status=d.status, detail=d.detail, fix=d.fix) for d in found]
        if any(d.name == "engine" and d.status == "fail" for d in found):
            self.add("leftovers", "skip", "skipped: no engine answers")
        else:
            await self.check_leftovers()
        if lm is not None:
            self.check_host_roots(lm)
            self.check_skills(lm)
            self.check_credentials(lm)
        else:
            for name in ("host roots", "skills", "credentials"):
                self.add(name, "skip", "skipped: the manifest is invalid")
        verdict = _verdict(self.checks)
        fails = [c.name for c in self.checks if c.status == "fail"]
        warns = [c.name for c in self.checks if c.status == "warn"]
        summary = {
            "ready": "every check passed",
            "degraded": f"works, with caveats: {', '.join(warns)}",
            "broken": f"the server cannot work until these are fixed: {', '.join(fails)}",
        }[verdict]
        return DoctorReport(
            verdict=verdict,
            summary=summary,
            version=__version__,
            backend=self.backend.name,
            manifest=str(self.manifest_path),
            checks=self.checks,
        )


async def run_doctor(
    manifest_path: Path,
    backend: Backend,
    *,
    cwd: Path | None = None,
    host_roots: list[Path] | None = None,
    environ: Mapping[str, str] | None = None,
) -> DoctorReport:
    """Run every check against this manifest and backend. Read-only, but for the disk check's probe: a
    short-lived, labelled container that asks the engine for a loop device and is removed at once."""
    doctor = _Doctor(
        manifest_path,
        backend,
        cwd=cwd or Path.cwd(),
        host_roots=host_roots,
        environ=os.environ if environ is None else environ,
    )
    return await doctor.run()


def format_report(report: DoctorReport, *, color: bool = False) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}
    colors = {"ok": "32", "warn": "33", "fail": "31", "skip": "2"}
    lines = [f"bottle-mcp doctor ({report.backend} backend, manifest {report.manifest})", ""]
    for c in report.checks:
        mark = marks[c.status]
        if color:
            mark = f"\x1b[{colors[c.status]}m{mark}\x1b[0m"
        lines.append(f"[{mark}] {c.name}: {c.detail}")
        if c.fix:
            lines.append(f"       fix: {c.fix}")
    lines += ["", f"verdict: {report.verdict.upper()}: {report.summary}"]
    return "\n".join(lines)
