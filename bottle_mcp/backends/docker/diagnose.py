"""What `doctor` asks of the Docker backend: does the engine answer, and does it have what bottles need.

Each finding is a `Diagnosis` (status, what was found, one fix unless ok). A check
that depends on the engine is skipped, with the reason, when the engine does not
answer. Read-only: creates and removes nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import EngineError, EngineNotFoundError, EngineUnreachableError
from ...manifest import LoadedManifest
from ..base import Diagnosis, Status
from .egress import EGRESS_IMAGE
from .engine import Engine, selectable_runtimes
from .images import image_fix_hint, image_status

# Docker 20.10: every engine feature the Docker backend uses is there.
MIN_API_VERSION = (1, 41)
DEFAULT_SOCKET = "/var/run/docker.sock"


async def diagnose(engine: Engine, lm: LoadedManifest | None, environ: Mapping[str, str]) -> list[Diagnosis]:
    """Engine, engine API, runtimes, images and networks, in that order."""
    d = _EngineDoctor(engine, environ)
    info = await d.check_engine(engine)
    if info is None:
        for name in ("runtimes", "images", "networks"):
            d.add(name, "skip", "skipped: no engine answers")
        return d.found
    d.check_runtimes(info, lm)
    if lm is not None:
        await d.check_images(engine, lm)
    else:
        d.add("images", "skip", "skipped: the manifest is invalid")
    await d.check_networks(engine, lm)
    return d.found


class _EngineDoctor:
    def __init__(self, engine: Engine, environ: Mapping[str, str]) -> None:
        self.podman = False
        self.engine = engine
        self.environ = environ
        self.found: list[Diagnosis] = []

    def add(self, name: str, status: Status, detail: str, fix: str | None = None) -> None:
        self.found.append(Diagnosis(name, status, detail, fix if status != "ok" else None))

    async def check_engine(self, engine: Engine) -> dict[str, Any] | None:
        where = engine.endpoint.url
        source = engine.endpoint.source
        try:
            version = await engine.call("engine version", lambda c: c.version())
            info = await engine.call("engine info", lambda c: c.info())
        except EngineUnreachableError as e:
            cause = str(e).partition(". To fix")[0]
            fix = e.fix if engine.endpoint.source != "the default socket" else _engine_fix(where, self.environ)
            self.add("engine", "fail", f"{cause}; address from {source}", fix)
            return None
        except EngineError as e:
            self.add(
                "engine",
                "fail",
                f"the engine at {where} ({source}) answered with an error: {e}",
                _engine_fix(where, self.environ),
            )
            return None
        components = version.get("Components") or []
        self.podman = any("podman" in str(comp.get("Name", "")).lower() for comp in components)
        product = "Podman" if self.podman else "Docker"
        self.add(
            "engine",
            "ok",
            f"{info.get('Name', 'engine')} at {where} ({source}, over {engine.endpoint.transport}) answers: "
            f"{product} {version.get('Version', '?')}, {info.get('OperatingSystem', '?')}, "
            f"{info.get('NCPU', '?')} CPUs",
        )
        if self.podman:
            self.add(
                "engine kind",
                "ok",
                "Podman's Docker-compatible API: bottles use network mode 'none' without a network object, "
                "tmpfs mounts are given to the bottle's user with Podman's U option, images may show under "
                "docker.io/ or localhost/",
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
        default = str(info.get("DefaultRuntime", "runc"))
        registered = set((info.get("Runtimes") or {}).keys())
        if self.podman:
            self.add(
                "runtime choice",
                "warn" if default != "runsc" else "ok",
                f"Podman runs every container with its default runtime ({default}): its Docker-compatible API "
                "ignores a per-container runtime, so bottles get exactly that one",
                None
                if default == "runsc"
                else 'for gVisor, register runsc and make it Podman\'s default (runtime = "runsc" in '
                "containers.conf's [engine] table)",
            )
        if "runc" not in registered:
            self.add(
                "runtime runc",
                "fail",
                f"the engine has no runc runtime (it has: {', '.join(sorted(registered)) or 'none'})",
                "install runc (apt-get install runc) and restart the engine",
            )
        else:
            self.add("runtime runc", "ok", f"runc is registered (default runtime: {default})")
        runtimes = selectable_runtimes(info, "podman" if self.podman else "docker")
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
        if "none" not in names and not self.podman:
            self.add(
                "networks",
                "fail",
                "the engine has no 'none' network, which offline bottles use",
                "restart the engine so that it recreates its built-in networks",
            )
            return
        egress = sorted(n for n, b in lm.manifest.bottles.items() if b.network == "egress") if lm else []
        if egress:
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
        elif self.podman:
            self.add("networks", "ok", "Podman: every bottle runs with network mode 'none' (no network object needed)")
        else:
            self.add("networks", "ok", "the engine's 'none' network is there; every bottle runs without a network")


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
    try:
        await engine.call("inspect image", lambda c: c.images.get(ref).id)
    except EngineNotFoundError:
        return False
    return True
