"""Command line: serve, plan, ls, cleanup, images, schema, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from pydantic import BaseModel

from . import __version__
from .errors import BottleError, InvalidArgumentError
from .labels import Instance

if TYPE_CHECKING:
    from .backends.base import Backend
    from .keep import OnExit
    from .models import BottleInfo
    from .service import BottleService

T = TypeVar("T")

ENV_MANIFEST = "BOTTLE_MCP_MANIFEST"
ENV_CONTEXT = "BOTTLE_MCP_DOCKER_CONTEXT"  # the same name as backends/docker/endpoint.py reads


def default_manifest() -> Path:
    """--manifest, else $BOTTLE_MCP_MANIFEST, else the built-in example."""
    env = os.environ.get(ENV_MANIFEST)
    if env:
        return Path(env)
    return Path(str(resources.files("bottle_mcp") / "data" / "example.toml"))


def _add_manifest(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--manifest",
        "-m",
        type=Path,
        default=None,
        help=f"TOML manifest (default: ${ENV_MANIFEST}, else the built-in example)",
    )


def _add_http_options(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--http",
        metavar="127.0.0.1:PORT",
        default=None,
        help="serve the same tools over Streamable HTTP at http://ADDR:PORT/mcp instead of stdio (loopback "
        "addresses only); every request needs a bearer token, made at start and printed unless given",
    )
    s.add_argument(
        "--http-token-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="read the HTTP transport's bearer token from FILE (default: $BOTTLE_MCP_HTTP_TOKEN, else a new "
        "random token printed on stderr at start)",
    )


def _add_global_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--version", action="version", version=f"bottle-mcp {__version__}")
    ap.add_argument("--backend", default=None, help="backend name (default: $BOTTLE_MCP_BACKEND or docker)")
    ap.add_argument(
        "--context",
        default=None,
        help="Docker context to use (beats $DOCKER_HOST and $DOCKER_CONTEXT, as with the docker CLI)",
    )
    ap.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log what the server does (info and debug) on stderr; without it only warnings and errors appear there",
    )
    ap.add_argument(
        "--log-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="also append the full log (info and up; debug with -v) to PATH",
    )


def _add_approve(sub: Any) -> None:
    ap_ = sub.add_parser(
        "approve",
        help="approve one launch of a plan ahead, by its digest (for hosts that cannot ask, e.g. `claude -p`)",
    )
    ap_.add_argument("digest", help="the plan's 'digest' (16 hex digits), from `bottle-mcp plan` or prepare_bottle")
    ap_.add_argument(
        "--valid-for",
        default="1h",
        help="how long the approval waits for its launch, e.g. 30m, 2h, 1d (default 1h); one launch uses it up",
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bottle-mcp", description="Launch and drive sandboxed sub-agents over MCP (stdio)."
    )
    _add_global_options(ap)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the stdio MCP server")
    _add_manifest(s)
    s.add_argument(
        "--host-root",
        action="append",
        type=Path,
        default=None,
        help="folder cp_in may read from (repeatable; overrides the manifest's [host] roots)",
    )
    s.add_argument("--output-cap", default=None, help="most bytes per output stream of one exec, e.g. 1m")
    s.add_argument(
        "--approve",
        choices=["never", "always", "elevated"],
        default=None,
        help="when a person must approve a launch through the MCP client (overrides the manifest's [host] "
        "approve; 'elevated': only bottles that grant more than the offline default)",
    )
    s.add_argument(
        "--approvals-log",
        type=Path,
        default=None,
        help="JSON-lines file recording approval decisions (default: $BOTTLE_MCP_APPROVALS_LOG, else "
        "$XDG_STATE_HOME/bottle-mcp/approvals.jsonl, else ~/.local/state/bottle-mcp/approvals.jsonl)",
    )
    _add_http_options(s)
    s.add_argument(
        "--warm-pool",
        type=int,
        default=None,
        metavar="N",
        help="keep N started spare bottles per bottle definition (overrides each bottle's warm_pool)",
    )
    _add_keep_options(s)

    p = sub.add_parser("plan", help="print the launch plan for an agent as JSON (the preflight)")
    _add_manifest(p)
    p.add_argument("agent")
    p.add_argument("--copy-cwd", action="store_true", help="include a copy of the current git repository")

    ls = sub.add_parser("ls", help="list live bottles on the backend")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")

    _add_keep_commands(sub)

    c = sub.add_parser("cleanup", help="remove what server instances that are gone left behind")
    c.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    c.add_argument("--json", action="store_true", help="print JSON instead of lines")

    i = sub.add_parser(
        "images", help="build the images of a manifest's bottles that have a [build] table, and the server's own"
    )
    _add_manifest(i)
    i.add_argument("--extra-ca-certs", type=Path, default=None, help="CA certificate file or folder for builds")
    i.add_argument("--rebuild", action="store_true", help="build even when the image is current")
    i.add_argument("--json", action="store_true", help="print a JSON summary on stdout; no build log")

    sc = sub.add_parser("schema", help="print the manifest's JSON Schema")
    sc.add_argument("--output", "-o", type=Path, default=None)

    d = sub.add_parser("demo", help="drive a real bottle through the MCP server, step by step")
    _add_manifest(d)

    it = sub.add_parser("init", help="write a commented starter manifest and print how to register the server")
    it.add_argument("path", nargs="?", type=Path, default=Path("bottle-mcp.toml"), help="default: ./bottle-mcp.toml")
    it.add_argument("--force", action="store_true", help="overwrite an existing file")
    it.add_argument("--print-only", action="store_true", help="write nothing; print the registration for PATH")
    it.add_argument("--json", action="store_true", help="print the registration as JSON")

    g = sub.add_parser("gen-docs", help="regenerate docs/tools.md, docs/manifest.md and docs/manifest.schema.json")
    g.add_argument("--output-dir", type=Path, default=Path("docs"))
    g.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is out of date")

    _add_approve(sub)

    dr = sub.add_parser("doctor", help="check that the server can work here; say what to fix if not")
    _add_manifest(dr)
    dr.add_argument("--host-root", action="append", type=Path, default=None, help="as for serve")
    dr.add_argument("--json", action="store_true", help="print the report as JSON")
    return ap


def _add_keep_options(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--on-exit",
        choices=["keep", "remove"],
        default=None,
        help="when the client goes away (stdin closes, or SIGINT/SIGTERM/SIGHUP): keep the bottles and their "
        "jobs for [host] keep_for, for the next server of this manifest to adopt, or remove them (overrides "
        "the manifest's [host] on_exit)",
    )
    s.add_argument("--keep-for", default=None, help="how long kept bottles live without a server, e.g. 20s, 1h")


def _add_keep_commands(sub: Any) -> None:
    """stop, shell and logs: for kept bottles and the person at the terminal."""
    st = sub.add_parser("stop", help="remove kept bottles (and their sidecars, networks and volumes) now, on purpose")
    st.add_argument("bottles", nargs="*", metavar="BOTTLE", help="bottle ids (see `bottle-mcp ls`)")
    st.add_argument("--all", action="store_true", help="every bottle kept for this user that no running server drives")

    sh = sub.add_parser(
        "shell", help="an interactive shell in a bottle (a terminal, as the bottle's user, with its limits and network)"
    )
    sh.add_argument("bottle", metavar="BOTTLE", help="a bottle id (see `bottle-mcp ls`)")
    sh.add_argument("-c", dest="command", default=None, help="run this command (with a terminal) instead of a shell")

    lg = sub.add_parser("logs", help="print a job's output (stdout, and stderr on stderr)")
    lg.add_argument("job", metavar="JOB", help="a job id (from exec background=true or run_agent)")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")


def _print_json(obj: Any) -> None:
    if isinstance(obj, BaseModel):
        text = obj.model_dump_json(indent=2)
    else:
        text = json.dumps(obj, indent=2, default=lambda o: o.model_dump(mode="json"))
    print(text)


def _instance_backend(args: argparse.Namespace) -> Backend:
    from .backends import get_backend

    return get_backend(Instance.current(), args.backend)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(fn)


# -- commands -----------------------------------------------------------------------


def parse_http_address(value: str) -> tuple[str, int]:
    """'127.0.0.1:8000' -> ('127.0.0.1', 8000); only loopback addresses are accepted."""
    import ipaddress

    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"--http {value!r}: write it as ADDRESS:PORT, e.g. 127.0.0.1:8765")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise InvalidArgumentError(
            f"--http {value!r}: the HTTP transport binds only to loopback addresses (127.0.0.1 or ::1); "
            "use stdio for everything else"
        )
    return host, int(port)


def _http_token(args: argparse.Namespace) -> tuple[str, bool]:
    """The bearer token: from --http-token-file, else $BOTTLE_MCP_HTTP_TOKEN, else a new one (made=True)."""
    from .httpguard import TOKEN_ENV, check_token, new_token

    if args.http_token_file is not None:
        try:
            text = args.http_token_file.read_text().strip()
        except OSError as e:
            raise InvalidArgumentError(f"--http-token-file {str(args.http_token_file)!r}: {e.strerror}") from None
        return check_token(text, f"--http-token-file {str(args.http_token_file)!r}"), False
    if os.environ.get(TOKEN_ENV):
        return check_token(os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"), False
    return new_token(), True


async def _serve_http(mcp: Any, host: str, port: int, token: str) -> None:
    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    from .httpguard import HttpGuard, local_names

    hosts, origins = local_names(host, port)
    app = mcp.streamable_http_app(
        host=host,
        transport_security=TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=origins),
    )
    guarded = HttpGuard(app, token=token, hosts=hosts, origins=origins)
    await uvicorn.Server(uvicorn.Config(guarded, host=host, port=port, log_level="info")).serve()


def cmd_serve(args: argparse.Namespace) -> int:
    from .logsafe import guard_logging
    from .manifest import parse_size
    from .server import build_server
    from .service import BottleService, ServiceConfig

    http = parse_http_address(args.http) if args.http else None
    token, token_made = _http_token(args) if http is not None else ("", False)
    manifest_path = args.manifest or default_manifest()
    on_exit, keep_for_s = _keep_settings(args, manifest_path)
    config = ServiceConfig(
        manifest_path=manifest_path,
        host_roots=args.host_root,
        output_cap=parse_size(args.output_cap) if args.output_cap else None,
        warm_pool=args.warm_pool,
        approve=args.approve,
        approvals_log=args.approvals_log,
        on_exit=on_exit,
        keep_for_s=keep_for_s,
    )
    if args.warm_pool is not None and not 0 <= args.warm_pool <= 64:
        raise InvalidArgumentError(f"--warm-pool {args.warm_pool}: give a number of spares from 0 to 64")
    service = BottleService(config, _instance_backend(args))
    # From here on, text from bottles may reach the log: redact credentials, escape and clip every record.
    guard_logging(service.redactor.secrets)
    log = logging.getLogger("bottle_mcp")
    log.info(
        "serving manifest %s as instance %s (backend %s)",
        config.manifest_path,
        service.instance.id,
        service.backend.name,
    )
    from .approval import approval_log, effective_policy

    policy, source = effective_policy(config.approve, service.manifest)
    log.info("launch approval: %s (%s); decisions go to %s", policy, source, approval_log(service).path)

    if http is not None:
        host, port = http
        url = f"http://{'[::1]' if host == '::1' else host}:{port}/mcp"
        log.info("serving over Streamable HTTP at %s (bearer token required)", url)
        if token_made:
            # For the person configuring the client: stderr, never the log's formatter (it is not a bottle's).
            print(
                f"bottle-mcp: every request to {url} needs the header 'Authorization: Bearer {token}'\n"
                f"bottle-mcp: e.g. claude mcp add --transport http bottle-mcp {url} "
                f'--header "Authorization: Bearer {token}"',
                file=sys.stderr,
                flush=True,
            )
        # uvicorn handles SIGINT/SIGTERM; the server's lifespan removes its bottles on the way out.
        _run(lambda: _serve_http(build_server(service), host, port, token))
        return 0

    keep = service.keep
    if keep.keeping:
        log.info("when the client goes away, bottles are kept for %d s for the next server", keep.keep_for_s)
    elif keep.on_exit == "keep" and keep.keep_for_s > 0:
        log.info("bottles cannot be kept on this backend; they are removed when the client goes away")

    async def main() -> None:
        mcp = build_server(service)
        # Hosts stop a stdio server with a burst of signals (Claude Code: SIGINT, SIGTERM 100 ms later,
        # SIGKILL at 500 ms). The receiver stays open until the way out is over, so the later signals
        # are caught and ignored instead of killing the server halfway through.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_on_signals, signals, tg.cancel_scope, service)
                tg.start_soon(_report_leftovers, service)
                await mcp.run_stdio_async()
                tg.cancel_scope.cancel()

    _run(main)
    return 0


def _keep_settings(args: argparse.Namespace, manifest_path: Path) -> tuple[OnExit, int | None]:
    """--on-exit (else the manifest's [host] on_exit) and --keep-for in seconds (None: the manifest's)."""
    from .manifest import load_manifest, parse_duration

    keep_for_s = None
    if args.keep_for is not None:
        try:
            keep_for_s = parse_duration(args.keep_for)
        except ValueError as e:
            raise InvalidArgumentError(f"--keep-for: {e}") from None
    return args.on_exit or load_manifest(manifest_path).manifest.host.on_exit, keep_for_s


async def _on_signals(signals: AsyncIterator[int], scope: anyio.CancelScope, service: BottleService) -> None:
    log = logging.getLogger("bottle_mcp")
    async for signum in signals:
        log.info("signal %d: the client went away; shutting down", signum)
        # The SDK reads stdin in a worker thread that no cancellation reaches, and a host that signals
        # keeps the pipe open: once the bottles are kept or removed, nothing is left to wait for.
        threading.Thread(target=_exit_when_closed, args=(service,), daemon=True).start()
        scope.cancel()
        return


def _exit_when_closed(service: BottleService) -> None:
    if service.closed.wait(timeout=60):
        logging.getLogger("bottle_mcp").info("shut down")
        logging.shutdown()
        os._exit(0)


async def _report_leftovers(service: BottleService) -> None:
    from .keep import spare_kept

    log = logging.getLogger("bottle_mcp")
    try:
        plan = await spare_kept(service.backend, await service.backend.prepare_cleanup())
    except BottleError as e:
        log.warning("could not look for leftovers at start: %s", e)
        return
    if plan.remove:
        log.warning(
            "%d resource(s) left by servers that are gone (e.g. %s); the cleanup tool removes them",
            len(plan.remove),
            plan.remove[0].name,
        )


def cmd_plan(args: argparse.Namespace) -> int:
    from .service import BottleService, ServiceConfig

    service = BottleService(ServiceConfig(manifest_path=args.manifest or default_manifest()), _instance_backend(args))

    async def main() -> None:
        from .approval import approval_note

        try:
            plan = await service.prepare(args.agent, copy_cwd=args.copy_cwd)
            _print_json(plan.model_copy(update={"approval": approval_note(plan, service.manifest, None)}))
        finally:
            await service.backend.aclose()

    _run(main)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from .keep import annotate, describe_left

    backend = _instance_backend(args)

    async def main() -> list[BottleInfo]:
        try:
            return await annotate(backend, await backend.list_active(), set(), None)
        finally:
            await backend.aclose()

    rows = _run(main)
    if args.json:
        _print_json([r.model_dump(mode="json") for r in rows])
        return 0
    if not rows:
        print("no bottles")
        return 0
    fmt = "{:<12} {:<12} {:<10} {:<8} {:<13} {:<14} {}"
    print(fmt.format("BOTTLE", "AGENT", "STATUS", "RUNTIME", "OWNER", "KEPT", "CREATED"))
    for r in rows:
        left = describe_left(r.kept_until) if r.kept_until else ""
        print(fmt.format(r.bottle_id, r.agent, r.status, r.runtime, r.owner, left, r.created_at))
    return 0


def cmd_shell(args: argparse.Namespace) -> int:
    backend = _instance_backend(args)
    engine = getattr(backend, "engine", None)
    if engine is None:
        raise BottleError(f"the {backend.name} backend has no shell; `bottle-mcp shell` needs the docker backend")
    from .backends.docker.terminal import open_shell

    try:
        return open_shell(engine, args.bottle, args.command)
    finally:
        engine.close()


def cmd_logs(args: argparse.Namespace) -> int:
    from .joblog import show_job
    from .keep import find_job

    found = find_job(args.job)
    if found is None:
        raise BottleError(
            f"no job {args.job!r} in this user's records; jobs are recorded by servers that keep their bottles "
            "([host] keep_for above 0), so list_jobs through the server that started it"
        )
    rec, job = found
    backend = _instance_backend(args)
    keeper = getattr(backend, "keeper", None)
    if keeper is None:
        raise BottleError(f"the {backend.name} backend cannot reach job output from here")

    def write(stream: Any) -> Callable[[str], None]:
        def w(text: str) -> None:
            stream.write(text)
            stream.flush()

        return w

    async def main() -> str:
        try:
            bottle = await keeper.reattach(rec.bottle_id, {}, channel=False)
            return await show_job(bottle, job, follow=args.follow, out=write(sys.stdout), err=write(sys.stderr))
        finally:
            await backend.aclose()

    state = _run(main)
    print(f"[job {args.job} in bottle {rec.bottle_id}: {state}]", file=sys.stderr)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from .keep import all_records, delete_record, lease_holder

    if not args.all and not args.bottles:
        raise BottleError("name the bottles to remove (bottle-mcp stop BOTTLE...), or pass --all")
    backend = _instance_backend(args)
    keeper = getattr(backend, "keeper", None)
    if keeper is None:
        raise BottleError(f"the {backend.name} backend keeps no bottles; there is nothing to stop here")
    failures = 0

    async def main() -> None:
        nonlocal failures
        try:
            infos = {i.bottle_id: i for i in await backend.list_active()}
            targets = list(all_records()) if args.all else list(args.bottles)
            for bottle_id in targets:
                holder = lease_holder(bottle_id)
                info = infos.get(bottle_id)
                if holder is not None or (info is not None and info.owner == "other-server"):
                    if not args.all:
                        who = holder or "another server"
                        print(
                            f"bottle-mcp: {bottle_id} is driven by a running server ({who}); "
                            "stop it with that server's stop_bottle, or end that server first",
                            file=sys.stderr,
                        )
                        failures += 1
                    continue
                removed = await keeper.remove_bottle(bottle_id)
                delete_record(bottle_id)
                if removed:
                    print(f"removed {bottle_id}: {', '.join(removed)}")
                elif not args.all:
                    print(f"bottle-mcp: no bottle {bottle_id!r} on the engine", file=sys.stderr)
                    failures += 1
        finally:
            await backend.aclose()

    _run(main)
    return 1 if failures else 0


CLEANUP_BATCH = 16


def cmd_cleanup(args: argparse.Namespace) -> int:
    from .keep import spare_kept
    from .models import CleanupPlan, CleanupReport
    from .progress import Bar, wants_bar

    backend = _instance_backend(args)

    async def main() -> CleanupReport:
        try:
            plan = await spare_kept(backend, await backend.prepare_cleanup())
            if args.dry_run:
                return CleanupReport(dry_run=True, removed=plan.remove, kept=plan.keep, failed=[])
            if args.json or not wants_bar(sys.stderr) or len(plan.remove) <= CLEANUP_BATCH:
                return await backend.cleanup(plan)
            # On a terminal, remove in batches (containers first, as the backend does) to show progress.
            order = {"container": 0, "volume": 1, "network": 2}
            items = sorted(plan.remove, key=lambda i: order[i.kind])
            report = CleanupReport(dry_run=False, removed=[], kept=plan.keep, failed=[])
            with Bar(len(items), "cleanup") as bar:
                for start in range(0, len(items), CLEANUP_BATCH):
                    batch = items[start : start + CLEANUP_BATCH]
                    part = await backend.cleanup(CleanupPlan(remove=batch, keep=[]))
                    report.removed.extend(part.removed)
                    report.failed.extend(part.failed)
                    bar.advance(len(batch), f"{batch[-1].kind}s")
            return report
        finally:
            await backend.aclose()

    report = _run(main)
    if args.json:
        _print_json(report)
    else:
        verb = "would remove" if report.dry_run else "removed"
        for item in report.removed:
            print(f"{verb} {item.kind} {item.name} (bottle {item.bottle_id})")
        for item in report.kept:
            why = "kept for the next server" if item.owner == "kept" else f"its server is {item.owner}"
            print(f"kept {item.kind} {item.name}: {why}")
        for f in report.failed:
            print(f"FAILED {f.item.kind} {f.item.name}: {f.error}", file=sys.stderr)
        print(f"{verb} {len(report.removed)}, kept {len(report.kept)}, failed {len(report.failed)}")
    return 1 if report.failed else 0


_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)")


def cmd_images(args: argparse.Namespace) -> int:
    from .backends.docker import DockerBackend
    from .backends.docker.images import build_builtin, build_image, builtin_images, builtin_status, image_status
    from .labels import Instance
    from .manifest import load_manifest

    lm = load_manifest(args.manifest or default_manifest())
    # The CLI chooses the backend; builds go through its engine connection (blocking calls: no event loop here).
    engine = DockerBackend(Instance.current()).engine
    summary: list[dict[str, str]] = []
    try:
        for name, bottle in lm.manifest.bottles.items():
            if bottle.build is None:
                summary.append({"bottle": name, "image": lm.image_for(name), "action": "not built here (no [build])"})
                continue
            status = image_status(engine, lm, name)
            summary.append(
                _build_one(
                    args,
                    name,
                    status.image,
                    status.present and not status.stale,
                    partial(build_image, engine, lm, name, extra_ca=args.extra_ca_certs),
                    f"for bottle {name!r}",
                )
            )
        for tag in builtin_images():  # the server's own images (the egress proxy, the git gate)
            status = builtin_status(engine, tag)
            summary.append(
                _build_one(
                    args,
                    "(server)",
                    tag,
                    status.present and not status.stale,
                    partial(build_builtin, engine, tag, extra_ca=args.extra_ca_certs),
                    "(the server's own)",
                )
            )
    finally:
        engine.close()
    if args.json:
        _print_json(summary)
    return 0


def _build_one(
    args: argparse.Namespace,
    bottle: str,
    image: str,
    current: bool,
    build: Callable[..., str],
    why: str,
) -> dict[str, str]:
    """Build one image unless it is current (and no rebuild was asked for), showing its progress."""
    from .progress import Bar, wants_bar

    def say(text: str) -> None:
        if not args.json:
            print(f"[images] {text}", file=sys.stderr)

    if current and not args.rebuild:
        say(f"{image} is current")
        return {"bottle": bottle, "image": image, "action": "current"}
    say(f"building {image} {why}")
    with Bar(0, f"building {image}", enabled=not args.json and wants_bar(sys.stderr)) as bar:

        def on_line(line: str) -> None:
            if bar.enabled:
                if m := _STEP.match(line):
                    bar.update(int(m.group(1)) - 1, m.group(3)[:40], total=int(m.group(2)))
            elif not args.json:
                print(f"  {line}", file=sys.stderr)

        image_id = build(on_line=on_line)
    say(f"built {image} ({image_id[:19]})")
    return {"bottle": bottle, "image": image, "action": "built", "image_id": image_id}


def cmd_schema(args: argparse.Namespace) -> int:
    from .manifest import manifest_json_schema

    text = json.dumps(manifest_json_schema(), indent=2) + "\n"
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return _run(lambda: run_demo((args.manifest or default_manifest()).resolve(), backend=args.backend))


def cmd_init(args: argparse.Namespace) -> int:
    from .manifest import load_manifest
    from .starter import registration, registration_text, starter_text

    path: Path = args.path.expanduser().absolute()
    written = False
    if not args.print_only:
        if path.exists() and not args.force:
            raise InvalidArgumentError(
                f"{str(path)!r} already exists; pass --force to overwrite it, or --print-only to print the "
                "registration for it"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(starter_text())
        written = True
        print(f"wrote {path}; edit it, then run `bottle-mcp doctor --manifest {path}`", file=sys.stderr)
    manifest = load_manifest(path).manifest
    reg = registration(path, manifest)
    if args.json:
        _print_json({"manifest": str(path), "written": written, **reg})
    else:
        print(registration_text(reg))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import DoctorReport, format_report, run_doctor

    backend = _instance_backend(args)
    manifest = (args.manifest or default_manifest()).expanduser().absolute()

    async def main() -> DoctorReport:
        try:
            return await run_doctor(manifest, backend, host_roots=args.host_root)
        finally:
            await backend.aclose()

    report = _run(main)
    if args.json:
        _print_json(report)
    else:
        print(format_report(report, color=sys.stdout.isatty() and "NO_COLOR" not in os.environ))
    return report.exit_code


def cmd_approve(args: argparse.Namespace) -> int:
    from .preapprove import PreApprovals, preapprovals_path

    m = re.fullmatch(r"([0-9]+)([smhd])", args.valid_for.strip())
    if m is None or int(m.group(1)) == 0:
        raise BottleError(f"--valid-for {args.valid_for!r}: write a duration such as 30m, 2h or 1d")
    seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    path = preapprovals_path()
    try:
        PreApprovals(path).add(args.digest.strip().lower(), seconds)
    except ValueError as e:
        raise BottleError(str(e)) from None
    print(
        f"Approved one launch of the plan with digest {args.digest} for the next {args.valid_for} (recorded in "
        f"{path}). launch_bottle with that plan now launches without asking; the approvals log records it."
    )
    return 0


def cmd_gen_docs(args: argparse.Namespace) -> int:
    from .docgen import generate

    files = _run(generate)
    stale = []
    for name, text in files.items():
        path: Path = args.output_dir / name
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(str(path))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run `bottle-mcp gen-docs`", file=sys.stderr)
        return 1
    for path_name in stale:
        print(f"wrote {path_name}", file=sys.stderr)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "plan": cmd_plan,
    "ls": cmd_ls,
    "cleanup": cmd_cleanup,
    "stop": cmd_stop,
    "shell": cmd_shell,
    "logs": cmd_logs,
    "images": cmd_images,
    "schema": cmd_schema,
    "demo": cmd_demo,
    "doctor": cmd_doctor,
    "init": cmd_init,
    "gen-docs": cmd_gen_docs,
    "approve": cmd_approve,
}


def setup_logging(*, verbose: bool, log_file: Path | None) -> None:
    """Warnings and errors on stderr; info and debug only with --verbose, or in --log-file.

    Agent hosts log everything a stdio server writes to stderr as an error (Claude Code does),
    so a quiet, healthy server writes nothing there.
    """
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.DEBUG if verbose else logging.WARNING)
    stderr.setFormatter(fmt)
    root.addHandler(stderr)
    level = logging.DEBUG if verbose else logging.INFO if log_file else logging.WARNING
    if log_file is not None:
        log_file.expanduser().parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_file.expanduser(), encoding="utf-8")
        to_file.setLevel(level)
        to_file.setFormatter(fmt)
        root.addHandler(to_file)
    root.setLevel(level)
    for noisy in ("urllib3", "docker", "mcp", "httpx", "uvicorn"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.context:
        # Read once, when the engine's address is resolved (backends/docker/endpoint.py).
        os.environ[ENV_CONTEXT] = args.context
    setup_logging(verbose=args.verbose, log_file=args.log_file)
    try:
        return COMMANDS[args.cmd](args)
    except BottleError as e:
        print(f"bottle-mcp: {e}", file=sys.stderr)
        if args.cmd == "serve":
            # Agent hosts show only "failed to connect"; this line in their log says where to look.
            print("bottle-mcp: the server did not start; `bottle-mcp doctor` checks the whole set-up", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
