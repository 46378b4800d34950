"""Images for bottles: whether they are present and current, and building them from a manifest.

A bottle with a `[build]` table is built from a local folder. The image is
labelled with a hash of that folder, so an edited recipe is noticed (the plan
warns) and rebuilt by `bottle-mcp images`. Builds can be given extra CA
certificates (for machines behind an intercepting proxy): they are placed in
the folder `.bottle-mcp-ca/` of the build context, which Dockerfiles may COPY;
without the option that folder exists but is empty.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import labels as L
from ...errors import EngineNotFoundError, ImageBuildError, InvalidArgumentError
from ...manifest import LoadedManifest
from .engine import Engine

CONTEXT_LABEL = f"{L.PREFIX}.context-sha"
CA_FOLDER = ".bottle-mcp-ca"


@dataclass(frozen=True)
class ImageStatus:
    image: str
    present: bool
    stale: bool


def context_hash(context: Path, dockerfile: str, args: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(f"dockerfile={dockerfile}\n".encode())
    for k in sorted(args):
        h.update(f"arg {k}={args[k]}\n".encode())
    for dirpath, dirs, files in os.walk(context):
        dirs[:] = sorted(d for d in dirs if d not in {".git", CA_FOLDER})
        for name in sorted(files):
            p = Path(dirpath) / name
            rel = p.relative_to(context).as_posix()
            h.update(f"file {rel}\n".encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


def image_fix_hint(lm: LoadedManifest) -> str:
    return f"build it with `bottle-mcp images --manifest {lm.path}` (or run scripts/setup.sh)"


def image_status(engine: Engine, lm: LoadedManifest, bottle: str) -> ImageStatus:
    """Blocking: call through Engine.run."""
    image = lm.image_for(bottle)
    try:
        attrs = engine.call_sync("inspect image", lambda c: c.images.get(image).attrs)
    except EngineNotFoundError:
        return ImageStatus(image, present=False, stale=False)
    build = lm.manifest.bottles[bottle].build
    if build is None:
        return ImageStatus(image, present=True, stale=False)
    want = context_hash(lm.resolve(build.context), build.dockerfile, build.args)
    have = ((attrs.get("Config") or {}).get("Labels") or {}).get(CONTEXT_LABEL)
    return ImageStatus(image, present=True, stale=have != want)


def collect_ca_certs(source: Path | None) -> list[Path]:
    """*.crt / *.pem files from a folder (recursively) or a single file."""
    if source is None:
        return []
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise InvalidArgumentError(f"extra CA certificates {str(source)!r} is neither a file nor a folder")
    return sorted(p for p in source.rglob("*") if p.is_file() and p.suffix in {".crt", ".pem"})


def build_image(
    engine: Engine,
    lm: LoadedManifest,
    bottle: str,
    *,
    extra_ca: Path | None = None,
    on_line: Callable[[str], None] = lambda _line: None,
) -> str:
    """Build one bottle's image from its [build] table (blocking). Returns the image id."""
    build = lm.manifest.bottles[bottle].build
    if build is None:
        raise ImageBuildError(
            f"bottle {bottle!r} has no [build] table; its image {lm.image_for(bottle)!r} comes from elsewhere"
        )
    context = lm.resolve(build.context)
    digest = context_hash(context, build.dockerfile, build.args)
    labels = {L.MANAGED: "true", CONTEXT_LABEL: digest, f"{L.PREFIX}.bottle-def": bottle}
    return _build(engine, context, build.dockerfile, lm.image_for(bottle), dict(build.args), labels, extra_ca, on_line)


def _build(
    engine: Engine,
    context: Path,
    dockerfile: str,
    tag: str,
    buildargs: dict[str, str],
    labels: dict[str, str],
    extra_ca: Path | None,
    on_line: Callable[[str], None],
) -> str:
    with tempfile.TemporaryDirectory(prefix="bottle-mcp-build-") as tmp:
        staged = Path(tmp) / "context"
        shutil.copytree(context, staged, symlinks=True, ignore=shutil.ignore_patterns(".git", "__pycache__"))
        ca_dir = staged / CA_FOLDER
        ca_dir.mkdir(exist_ok=True)
        for i, cert in enumerate(collect_ca_certs(extra_ca)):
            shutil.copyfile(cert, ca_dir / f"extra-{i:02d}-{cert.stem}.crt")

        def run(c: Any) -> str:
            image_id = ""
            for chunk in c.api.build(
                path=str(staged),
                dockerfile=dockerfile,
                tag=tag,
                buildargs=buildargs,
                labels=labels,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            ):
                if "error" in chunk:
                    raise ImageBuildError(
                        f"building {tag!r} from {str(context)!r} failed: {str(chunk['error']).strip()}"
                    )
                line = str(chunk.get("stream", "")).rstrip()
                if line:
                    on_line(line)
                aux = chunk.get("aux")
                if isinstance(aux, dict) and "ID" in aux:
                    image_id = str(aux["ID"])
            return image_id

        return engine.call_sync(f"build {tag}", run)


# Images the server itself runs (not named by any manifest), by the folder under data/images that
# holds their recipe. Each is tagged with the hash of its recipe, so a server always runs the
# sidecar its own code was written for, and servers of different versions can share an engine.
_DATA_IMAGES = Path(__file__).parents[2] / "data" / "images"
BUILTIN_RECIPES = ("egress-proxy", "git-gate")


def builtin_tag(recipe: str) -> str:
    """The tag of one of the server's own images: `bottle-mcp/RECIPE:<recipe hash>`."""
    return f"bottle-mcp/{recipe}:{context_hash(_DATA_IMAGES / recipe, 'Dockerfile', {})}"


def builtin_images() -> dict[str, str]:
    """Tag -> recipe folder, for every image the server runs itself."""
    return {builtin_tag(recipe): recipe for recipe in BUILTIN_RECIPES}


def builtin_status(engine: Engine, tag: str) -> ImageStatus:
    """Blocking: whether a built-in image is present (its tag names its recipe, so it is never stale)."""
    try:
        engine.call_sync("inspect image", lambda c: c.images.get(tag).attrs)
    except EngineNotFoundError:
        return ImageStatus(tag, present=False, stale=False)
    return ImageStatus(tag, present=True, stale=False)


def build_builtin(
    engine: Engine, tag: str, *, extra_ca: Path | None = None, on_line: Callable[[str], None] = lambda _line: None
) -> str:
    """Build one of the server's own images (blocking). Returns the image id."""
    context = _DATA_IMAGES / builtin_images()[tag]
    labels = {L.MANAGED: "true", CONTEXT_LABEL: context_hash(context, "Dockerfile", {})}
    return _build(engine, context, "Dockerfile", tag, {}, labels, extra_ca, on_line)
