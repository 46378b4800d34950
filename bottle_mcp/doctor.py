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
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from . import __version__
from .credentials import credential_plans
from .errors import BottleError, EngineError, EngineUnreachableError
from .images import image_fix_hint, image_status
from .manifest import LoadedManifest, load_manifest

if TYPE_CHECKING:
    from .backends.base import Backend
    from .backends.docker.engine import Engine

Status = Literal["ok", "warn", "fail", "skip"]
Verdict = Literal["ready", "degraded", "broken"]

# Docker 20.10: every engine feature the Docker backend uses is there.
MIN_API_VERSION = (1, 41)
DEFAULT_SOCKET = "/var/run/docker.sock"


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

    async def check_engine(self, engine: Engine) -> dict[str, Any] | None:
        where = engine.where
        source = "$DOCKER_HOST" if self.environ.get("DOCKER_HOST") else "the default socket"
        try:
            version = await engine.call("engine version", lambda c: c.version())
            info = await engine.call("engine info", lambda c: c.info())
        except EngineUnreachableError as e:
            cause = str(e).partition(". Start it")[0]  # its generic fix gives way to a more precise one
            self.add("engine", "fail", f"{cause}; address from {source}", _engine_fix(where, self.environ))
            return None
        except EngineError as e:
            self.add(
                "engine",
                "fail",
                f"the engine at {where} ({source}) answered with an error: {e}",
                _engine_fix(where, self.environ),
            )
            return None
        self.add(
            "engine",
            "ok",
            f"{info.get('Name', 'engine')} at {where} ({source}) answers: Docker {version.get('Version', '?')}, "
            f"{info.get('OperatingSystem', '?')}, {info.get('NCPU', '?')} CPUs",
        )
        api = str(version.get("ApiVersion", "0.0"))
        parts = tuple(int(x) for x in re.findall(r"\d+", api)[:2])
        if parts < MIN_API_VERSION:
            want = ".".join(map(str, MIN_API_VERSION))
            self.add(
                "engine API",
                "fail",
                f"engine API {api} is older than {want} (Docker 20.10), the oldest this server supports",
                "upgrade the Docker engine to 20.10 or newer",
            )
        else:
            self.add("engine API", "ok", f"API {api} (client needs {'.'.join(map(str, MIN_API_VERSION))} or newer)")
        return info

    def check_runtimes(self, info: dict[str, Any], lm: LoadedManifest | None) -> None:
        runtimes = set((info.get("Runtimes") or {}).keys())
        default = str(info.get("DefaultRuntime", "runc"))
        if "runc" not in runtimes:
            self.add(
                "runtime runc",
                "fail",
                f"the engine has no runc runtime (it has: {', '.join(sorted(runtimes)) or 'none'})",
                "install runc (apt-get install runc) and restart the engine",
            )
        else:
            self.add("runtime runc", "ok", f"runc is registered (default runtime: {default})")
        wants = {name: b.runtime for name, b in lm.manifest.bottles.items()} if lm else {}
        needs_runsc = sorted(n for n, r in wants.items() if r == "runsc")
        if "runsc" in runtimes:
            self.add("runtime runsc", "ok", "gVisor (runsc) is registered: bottles with runtime 'auto' use it")
        elif needs_runsc:
            self.add(
                "runtime runsc",
                "fail",
                f"bottle(s) {', '.join(needs_runsc)} ask for runtime = 'runsc' but the engine has no runsc runtime",
                "install gVisor and register it with the engine (https://gvisor.dev/docs/user_guide/install/), "
                "or set runtime = 'auto' in the manifest",
            )
        else:
            self.add(
                "runtime runsc",
                "warn",
                "gVisor (runsc) is not registered: bottles run with runc and share the host kernel",
                "for a stronger boundary, install gVisor and register it as the runtime 'runsc' "
                "(https://gvisor.dev/docs/user_guide/install/); nothing else changes",
            )

    async def check_images(self, engine: Engine, lm: LoadedManifest) -> None:
        for name, bottle in lm.manifest.bottles.items():
            check = f"image {name}"
            try:
                status = await engine.run(image_status, engine, lm, name)
            except EngineError as e:
                self.add(check, "fail", f"could not inspect {lm.image_for(name)!r}: {e}", "check the engine (above)")
                continue
            if status.present and not status.stale:
                self.add(check, "ok", f"{status.image} is present" + (" and current" if bottle.build else ""))
                continue
            if status.present:
                self.add(
                    check,
                    "warn",
                    f"{status.image} was built from an older version of its build folder",
                    image_fix_hint(lm),
                )
                continue
            if bottle.build is None:
                self.add(
                    check,
                    "fail",
                    f"{status.image} is not on the engine and the manifest has no [build] table for it",
                    f"pull or load it (docker pull {status.image}), or add a [bottles.{name}.build] table",
                )
                continue
            bases = _base_images(lm.resolve(bottle.build.context) / bottle.build.dockerfile)
            missing = [b for b in bases if not await _image_present(engine, b)]
            if missing:
                self.add(
                    check,
                    "fail",
                    f"{status.image} is missing and cannot be built yet: its base image "
                    f"{', '.join(missing)} is not on the engine (builds do not pull)",
                    "run scripts/setup.sh (it bootstraps bottle-mcp/base:bookworm from the Debian mirror)"
                    if any(b.startswith("bottle-mcp/base") for b in missing)
                    else f"docker pull {missing[0]}, then {image_fix_hint(lm)}",
                )
            else:
                self.add(
                    check,
                    "fail",
                    f"{status.image} is missing (buildable: its base image {', '.join(bases) or '(none)'} is present); "
                    "launch_bottle fails until it is built",
                    image_fix_hint(lm),
                )

    async def check_networks(self, engine: Engine, lm: LoadedManifest | None) -> None:
        try:
            names = await engine.call("list networks", lambda c: [n["Name"] for n in c.api.networks()])
        except EngineError as e:
            self.add("networks", "fail", f"could not list networks: {e}", "check the engine (above)")
            return
        if "none" not in names:
            self.add(
                "networks",
                "fail",
                "the engine has no 'none' network, which offline bottles use",
                "restart the engine so that it recreates its built-in networks",
            )
            return
        egress = sorted(n for n, b in lm.manifest.bottles.items() if b.network == "egress") if lm else []
        if egress:
            from .backends.docker.egress import EGRESS_IMAGE

            try:
                await engine.call("inspect egress image", lambda c: c.images.get(EGRESS_IMAGE).id)
                self.add(
                    "networks",
                    "ok",
                    f"bottle(s) {', '.join(egress)} reach only their allowed hosts, through the egress proxy "
                    f"({EGRESS_IMAGE} is present); the others run without a network",
                )
            except EngineError:
                self.add(
                    "networks",
                    "fail",
                    f"bottle(s) {', '.join(egress)} declare network = 'egress', whose proxy image {EGRESS_IMAGE} "
                    "is missing: their launch fails",
                    "build it with `bottle-mcp images` (or run scripts/setup.sh)",
                )
        else:
            self.add("networks", "ok", "the engine's 'none' network is there; every bottle runs without a network")

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
        engine = _engine_of(self.backend)
        if engine is None:
            self.add("engine", "ok", f"backend {self.backend.name!r} needs no container engine")
            await self.check_leftovers()
        elif (info := await self.check_engine(engine)) is None:
            for name in ("runtimes", "images", "networks", "leftovers"):
                self.add(name, "skip", "skipped: no engine answers")
        else:
            self.check_runtimes(info, lm)
            if lm is not None:
                await self.check_images(engine, lm)
            else:
                self.add("images", "skip", "skipped: the manifest is invalid")
            await self.check_networks(engine, lm)
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
    """Run every check against this manifest and backend. Read-only: creates and removes nothing."""
    doctor = _Doctor(
        manifest_path,
        backend,
        cwd=cwd or Path.cwd(),
        host_roots=host_roots,
        environ=os.environ if environ is None else environ,
    )
    return await doctor.run()


def _engine_of(backend: Backend) -> Engine | None:
    engine = getattr(backend, "engine", None)
    from .backends.docker.engine import Engine

    return engine if isinstance(engine, Engine) else None


def _engine_fix(where: str, environ: Mapping[str, str]) -> str:
    if not environ.get("DOCKER_HOST"):
        sock = Path(DEFAULT_SOCKET)
        if sock.exists() and not os.access(sock, os.R_OK | os.W_OK):
            return (
                f"{DEFAULT_SOCKET} exists but this user may not use it: add the user to the 'docker' group "
                "(sudo usermod -aG docker $USER, then log in again), or point DOCKER_HOST at an engine you may use"
            )
        if not sock.exists():
            return (
                "start the Docker engine (sudo systemctl start docker, or scripts/setup.sh), or set DOCKER_HOST. "
                "Agent hosts start the server with a small environment: if your engine is not at the default "
                "socket, pass DOCKER_HOST in the registration (claude mcp add -e DOCKER_HOST=...)"
            )
    return (
        f"start the engine at {where} or point DOCKER_HOST at a running one; agent hosts pass only the "
        "variables in their registration, so put DOCKER_HOST there too (claude mcp add -e DOCKER_HOST=...)"
    )


_FROM_RE = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", re.IGNORECASE | re.MULTILINE)


def _base_images(dockerfile: Path) -> list[str]:
    """Images a Dockerfile builds FROM (stage names and `scratch` left out)."""
    try:
        text = dockerfile.read_text(encoding="utf-8")
    except OSError:
        return []
    stages = {m.lower() for m in re.findall(r"^\s*FROM\s+\S+\s+AS\s+(\S+)", text, re.IGNORECASE | re.MULTILINE)}
    out: list[str] = []
    for ref in _FROM_RE.findall(text):
        if ref.lower() in stages or ref == "scratch" or "$" in ref or ref in out:
            continue
        out.append(ref)
    return out


async def _image_present(engine: Engine, ref: str) -> bool:
    from .errors import EngineNotFoundError

    try:
        await engine.call("inspect image", lambda c: c.images.get(ref).id)
    except EngineNotFoundError:
        return False
    return True


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
