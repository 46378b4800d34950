"""Command line: serve, plan, ls, cleanup, images, schema, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel

from . import __version__
from .errors import BottleError
from .labels import Instance

T = TypeVar("T")

ENV_MANIFEST = "BOTTLE_MCP_MANIFEST"


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


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bottle-mcp", description="Launch and drive sandboxed sub-agents over MCP (stdio)."
    )
    ap.add_argument("--version", action="version", version=f"bottle-mcp {__version__}")
    ap.add_argument("--backend", default=None, help="backend name (default: $BOTTLE_MCP_BACKEND or docker)")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
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
        "--warm-pool",
        type=int,
        default=None,
        metavar="N",
        help="keep N started spare bottles per bottle definition (overrides each bottle's warm_pool)",
    )

    p = sub.add_parser("plan", help="print the launch plan for an agent as JSON (the preflight)")
    _add_manifest(p)
    p.add_argument("agent")
    p.add_argument("--copy-cwd", action="store_true", help="include a copy of the current git repository")

    ls = sub.add_parser("ls", help="list live bottles on the backend")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")

    c = sub.add_parser("cleanup", help="remove what server instances that are gone left behind")
    c.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    c.add_argument("--json", action="store_true", help="print JSON instead of lines")

    i = sub.add_parser("images", help="build the images of a manifest's bottles that have a [build] table")
    _add_manifest(i)
    i.add_argument("--extra-ca-certs", type=Path, default=None, help="CA certificate file or folder for builds")
    i.add_argument("--rebuild", action="store_true", help="build even when the image is current")

    sc = sub.add_parser("schema", help="print the manifest's JSON Schema")
    sc.add_argument("--output", "-o", type=Path, default=None)

    d = sub.add_parser("demo", help="drive a real bottle through the MCP server, step by step")
    _add_manifest(d)
    return ap


def _print_json(obj: Any) -> None:
    if isinstance(obj, BaseModel):
        text = obj.model_dump_json(indent=2)
    else:
        text = json.dumps(obj, indent=2, default=lambda o: o.model_dump(mode="json"))
    print(text)


def _instance_backend(args: argparse.Namespace) -> Any:
    from .backends import get_backend

    return get_backend(Instance.current(), args.backend)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(fn)


# -- commands -----------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from .manifest import parse_size
    from .server import build_server
    from .service import BottleService, ServiceConfig

    config = ServiceConfig(
        manifest_path=args.manifest or default_manifest(),
        host_roots=args.host_root,
        output_cap=parse_size(args.output_cap) if args.output_cap else None,
        warm_pool=args.warm_pool,
    )
    if args.warm_pool is not None and not 0 <= args.warm_pool <= 64:
        raise BottleError(f"--warm-pool {args.warm_pool}: give a number of spares from 0 to 64")
    service = BottleService(config, _instance_backend(args))
    log = logging.getLogger("bottle_mcp")
    log.info(
        "serving manifest %s as instance %s (backend %s)",
        config.manifest_path,
        service.instance.id,
        service.backend.name,
    )

    async def main() -> None:
        mcp = build_server(service)
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                    async for signum in signals:
                        log.info("signal %d: shutting down", signum)
                        tg.cancel_scope.cancel()
                        return

            async def report_leftovers() -> None:
                try:
                    plan = await service.backend.prepare_cleanup()
                except BottleError as e:
                    log.warning("could not look for leftovers at start: %s", e)
                    return
                if plan.remove:
                    log.warning(
                        "%d resource(s) left by servers that are gone (e.g. %s); the cleanup tool removes them",
                        len(plan.remove),
                        plan.remove[0].name,
                    )

            tg.start_soon(on_signal)
            tg.start_soon(report_leftovers)
            await mcp.run_stdio_async()
            tg.cancel_scope.cancel()

    _run(main)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .service import BottleService, ServiceConfig

    service = BottleService(ServiceConfig(manifest_path=args.manifest or default_manifest()), _instance_backend(args))

    async def main() -> None:
        try:
            _print_json(await service.prepare(args.agent, copy_cwd=args.copy_cwd))
        finally:
            await service.backend.aclose()

    _run(main)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    backend = _instance_backend(args)
    rows = _run(backend.list_active)
    if args.json:
        _print_json([r.model_dump(mode="json") for r in rows])
        return 0
    if not rows:
        print("no bottles")
        return 0
    fmt = "{:<12} {:<12} {:<10} {:<8} {:<7} {:<13} {}"
    print(fmt.format("BOTTLE", "AGENT", "STATUS", "RUNTIME", "", "OWNER", "CREATED"))
    for r in rows:
        print(fmt.format(r.bottle_id, r.agent, r.status, r.runtime, "", r.owner, r.created_at))
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    backend = _instance_backend(args)

    async def main() -> Any:
        plan = await backend.prepare_cleanup()
        if args.dry_run:
            from .models import CleanupReport

            return CleanupReport(dry_run=True, removed=plan.remove, kept=plan.keep, failed=[])
        return await backend.cleanup(plan)

    report = _run(main)
    if args.json:
        _print_json(report)
    else:
        verb = "would remove" if report.dry_run else "removed"
        for item in report.removed:
            print(f"{verb} {item.kind} {item.name} (bottle {item.bottle_id})")
        for item in report.kept:
            print(f"kept {item.kind} {item.name}: its server is {item.owner}")
        for f in report.failed:
            print(f"FAILED {f.item.kind} {f.item.name}: {f.error}", file=sys.stderr)
        print(f"{verb} {len(report.removed)}, kept {len(report.kept)}, failed {len(report.failed)}")
    return 1 if report.failed else 0


def cmd_images(args: argparse.Namespace) -> int:
    from .backends.docker import Engine
    from .images import build_image, image_status
    from .manifest import load_manifest

    lm = load_manifest(args.manifest or default_manifest())
    engine = Engine()
    built = 0
    for name, bottle in lm.manifest.bottles.items():
        if bottle.build is None:
            continue
        status = image_status(engine, lm, name)
        if status.present and not status.stale and not args.rebuild:
            print(f"[images] {status.image} is current", file=sys.stderr)
            continue
        print(f"[images] building {status.image} for bottle {name!r}", file=sys.stderr)
        image_id = build_image(
            engine,
            lm,
            name,
            extra_ca=args.extra_ca_certs,
            on_line=lambda line: print(f"  {line}", file=sys.stderr),
        )
        print(f"[images] built {status.image} ({image_id[:19]})", file=sys.stderr)
        built += 1
    return 0


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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": cmd_serve,
    "plan": cmd_plan,
    "ls": cmd_ls,
    "cleanup": cmd_cleanup,
    "images": cmd_images,
    "schema": cmd_schema,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("urllib3", "docker", "mcp", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.cmd](args)
    except BottleError as e:
        print(f"bottle-mcp: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
