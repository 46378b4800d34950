"""The git gate's secret scan: every object a push carries, and the name of every ref it updates.

Runs inside the gate's pre-receive hook (on the image's own Python with
detect-secrets). While the hook runs, git keeps the pushed objects in a quarantine
directory (GIT_QUARANTINE_PATH) that holds nothing else, whatever the objects are
and however they arrived (loose, or in a pack, as deltas against objects of either
side: git resolves them when it indexes the pack and hands out whole objects). The
scan lists that directory's objects, drops those the gate already had (they came
from the upstream, or passed the gate before), and reads every other one through
git:

    commit  every header but tree/parent (author, committer, encoding, mergetag,
            gpgsig and any extra header) and every message line
    tag     every header but object/type (the tag's name, tagger, extra headers)
            and every message line
    tree    every entry's name
    blob    every line, except lines that the blob's previous version at the same
            path (in the pushed commit's parent) already held upstream

plus the ref names the push updates, including refs that point at objects the
upstream already has (no new object at all). The configuration is the gate's
alone: detect-secrets' plugins are called directly, so neither its inline allow
comments nor any baseline or allowlist file in the push has any effect, and the
rules below cover credentials that detect-secrets does not know (Anthropic keys)
and the very credentials the server forwards into the bottle (matched by a short
prefix, length and hash: the gate never holds them).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ZERO = "0" * 40
# Bytes of new objects one push may carry; more is refused (the scan must finish, and in memory).
MAX_SCAN_BYTES = 128 * 1024**2
# Bytes of the upstream's own earlier versions read to know which lines a changed file already had.
MAX_BASELINE_BYTES = 64 * 1024**2
# Long lines (minified code, binary files) are scanned in overlapping pieces.
CHUNK = 4096
OVERLAP = 512
SHOWN_NAME = 80

# Rules the gate adds to detect-secrets' plugins: (name, pattern).
EXTRA_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("Anthropic API key", re.compile(r"sk-ant-[A-Za-z0-9_-]{20,}")),
    ("OpenAI API key", re.compile(r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}")),
    ("GitHub fine-grained token", re.compile(r"github_pat_[A-Za-z0-9_]{22,}")),
    ("GitHub token", re.compile(r"gh[pousr]_[A-Za-z0-9]{36,}")),
    ("Google API key", re.compile(r"AIza[0-9A-Za-z_-]{35}")),
    ("Hugging Face token", re.compile(r"hf_[A-Za-z0-9]{30,}")),
    ("private key", re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY( BLOCK)?-----")),
]
# detect-secrets plugins left out: public IP addresses are not credentials.
SKIPPED_PLUGINS = {"IPPublicDetector"}
# What a line must hold for some plugins to match it (their own patterns require it): every keyword of
# KeywordDetector holds one of these words.
KEYWORD_HINT = re.compile(r"key|pass|pwd|secret|contrase", re.IGNORECASE)
# The credentials of these plugins (an assignment or URL around a long token) all end in a run of at least
# 24 of these characters (24 letters, 44 word characters, 48 or 64 hex digits or letters and digits); their
# expressions are slow to search, the run is not.
LONG_RUN = re.compile(r"[A-Za-z0-9_-]{24}")
LONG_RUN_PLUGINS = {"CloudantDetector", "IbmCloudIamDetector", "IbmCosHmacDetector", "SoftlayerDetector"}
# Headers whose values git's fsck has already checked to be object ids or type names.
STRUCTURAL = {"commit": {"tree", "parent"}, "tag": {"object", "type"}}
HEADER_NAME = re.compile(r"^[a-z][a-z0-9-]{0,23}$")


class ScanError(Exception):
    """The push could not be scanned; the gate refuses it (fail closed)."""


@dataclass(frozen=True)
class Finding:
    kind: str  # blob, tree, commit, tag or ref
    oid: str
    where: str  # never the secret, never a name that held one
    rule: str
    redacted: str

    def describe(self) -> str:
        return f"{self.kind} {self.oid[:12]} {self.where}: {self.rule}: {self.redacted}"


@dataclass
class Result:
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # new objects by kind
    refs: list[str] = field(default_factory=list)  # the ref names as they may be shown
    scanned_bytes: int = 0
    seconds: float = 0.0

    @property
    def commits(self) -> int:
        return self.counts.get("commit", 0)

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {k}(s)" for k, n in sorted(self.counts.items())) or "none"
        return f"{sum(self.counts.values())} new object(s) ({kinds}) and {len(self.refs)} ref name(s)"


def redact(value: str) -> str:
    """Enough to recognise which secret it was, never enough to use it."""
    if len(value) >= 16:
        return f"{value[:4]}... ({len(value)} characters, redacted)"
    return f"({len(value)} characters, redacted)"


def printable(text: str, limit: int = SHOWN_NAME) -> str:
    """A name from the push as it may be shown: escaped, clipped."""
    shown = text.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= limit else shown[:limit] + f"... ({len(text)} characters)"


class Scanner:
    """detect-secrets' plugins plus the gate's rules. Each plugin runs on the lines it could match:
    a blob is first searched whole for what the plugin's own patterns require (its regular
    expressions, in multi-line mode; a quoted run of its characters long enough to pass its entropy
    limit; one of its keywords), and only the lines of a blob that can match are handed to it."""

    def __init__(self, credentials: list[dict[str, Any]]) -> None:
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

        self.plugins = [
            (plugin, _gate(plugin))
            for cls in get_mapping_from_secret_type_to_class().values()
            if cls.__name__ not in SKIPPED_PLUGINS
            for plugin in (cls(),)
        ]
        self.credentials = credentials

    def scan_text(
        self, text: str, filename: str = "message.txt", skip: set[str] | frozenset[str] = frozenset()
    ) -> Iterator[tuple[int, str, str]]:
        """(line number, rule, secret) for every line of a text but those in `skip`; long lines in
        overlapping pieces."""
        active = [(p, g) for p, g in self.plugins if g is None or g.search(text)]
        for number, line in enumerate(text.split("\n"), 1):
            if line in skip:
                continue
            if len(line) <= CHUNK:
                pieces: Iterable[str] = (line,)
            else:
                pieces = (line[i : i + CHUNK] for i in range(0, len(line), CHUNK - OVERLAP))
            for piece in pieces:
                for rule, secret in self.scan_line(filename, piece, active):
                    yield number, rule, secret

    def scan_line(
        self, path: str, line: str, plugins: list[tuple[Any, Any]] | None = None
    ) -> Iterator[tuple[str, str]]:
        """(rule, secret) pairs found in one line."""
        if not line.strip():
            return
        seen: set[str] = set()
        for name, pattern in EXTRA_RULES:
            for m in pattern.finditer(line):
                seen.add(m.group(0))
                yield name, m.group(0)
        for cred in self.credentials:
            prefix, length = str(cred["prefix"]), int(cred["length"])
            start = line.find(prefix)
            while start != -1:
                candidate = line[start : start + length]
                if hashlib.sha256(candidate.encode()).hexdigest() == cred["sha256"]:
                    yield f"forwarded credential {cred['name']}", candidate
                start = line.find(prefix, start + 1)
        for plugin, gate in self.plugins if plugins is None else plugins:
            if gate is not None and not gate.search(line):
                continue
            try:
                found = plugin.analyze_line(filename=path, line=line, line_number=0)
            except Exception:  # a plugin's failure must not let a line through unscanned
                found = set()
                yield f"{type(plugin).__name__} failed on this line", line[:40]
            for secret in found:
                value = secret.secret_value or ""
                if any(value and value in s for s in seen):
                    continue
                yield str(secret.type), value


class _AnyOf:
    """Matches where any of several patterns matches (after a cheaper pattern that must match first)."""

    def __init__(self, patterns: list[re.Pattern[str]], first: re.Pattern[str] | None = None) -> None:
        self.patterns = patterns
        self.first = first

    def search(self, text: str) -> bool:
        if self.first is not None and not self.first.search(text):
            return False
        return any(p.search(text) for p in self.patterns)


def _gate(plugin: Any) -> Any:
    """What a text must match for the plugin to find anything in one of its lines, or None (always run it).
    Only ever looser than the plugin: a line the plugin would flag always passes."""
    name = type(plugin).__name__
    if name == "KeywordDetector":
        return KEYWORD_HINT
    charset, limit = getattr(plugin, "charset", None), getattr(plugin, "entropy_limit", None)
    if charset is not None and limit is not None:
        # A quoted string of the plugin's characters; above the entropy limit it has more than
        # 2**limit distinct characters, so at least that many characters.
        return re.compile(rf"['\"][{re.escape(charset)}]{{{int(2**limit)},}}['\"]")
    patterns = getattr(plugin, "denylist", None)
    if not patterns or any(r"\A" in p.pattern or r"\Z" in p.pattern for p in patterns):
        return None
    # In multi-line mode, ^ and $ match at every line's ends: a match in one line is a match in the text.
    first = LONG_RUN if name in LONG_RUN_PLUGINS else None
    return _AnyOf([re.compile(p.pattern, p.flags | re.MULTILINE) for p in patterns], first)


# -- git -----------------------------------------------------------------------------------


def git(*args: str, data: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
    proc = subprocess.run(["git", *args], input=data, capture_output=True, check=False, env=env)
    if proc.returncode != 0:
        raise ScanError(f"git {args[0]} failed: {proc.stderr.decode(errors='replace').strip()[:300]}")
    return proc.stdout


def _only(objects: str) -> dict[str, str]:
    """The hook's environment, but seeing one object directory and no alternates."""
    env = {k: v for k, v in os.environ.items() if k not in {"GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_QUARANTINE_PATH"}}
    env["GIT_OBJECT_DIRECTORY"] = objects
    return env


def new_objects(repo: Path) -> dict[str, tuple[str, int]]:
    """oid -> (type, size) of every object the push carries that the gate did not have."""
    quarantine = os.environ.get("GIT_QUARANTINE_PATH")
    if not quarantine or not Path(quarantine).is_dir():
        raise ScanError("git gave the hook no quarantine directory, so the pushed objects cannot be told apart")
    listed = git(
        "cat-file",
        "--batch-all-objects",
        "--unordered",
        "--batch-check=%(objectname) %(objecttype) %(objectsize)",
        env=_only(quarantine),
    ).split()
    carried = {listed[i].decode(): (listed[i + 1].decode(), int(listed[i + 2])) for i in range(0, len(listed), 3)}
    if not carried:
        return {}
    # A pack may also carry objects the gate has (the bases a thin pack was completed with).
    have = git(
        "cat-file",
        "--batch-check=%(objectname)",
        data="\n".join(carried).encode() + b"\n",
        env=_only(str(repo / "objects")),
    )
    for line in have.decode().splitlines():
        parts = line.split()
        if len(parts) == 1 and parts[0] in carried:
            del carried[parts[0]]
    return carried


def read_objects(oids: list[str]) -> Iterator[tuple[str, str, bytes]]:
    """(oid, type, content) of each object, through one `git cat-file --batch`."""
    if not oids:
        return
    proc = subprocess.Popen(
        ["git", "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdin is not None
    assert proc.stdout is not None

    def feed() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write("".join(o + "\n" for o in oids).encode())
        except OSError:
            pass
        finally:
            proc.stdin.close()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        for _ in oids:
            head = proc.stdout.readline().decode().split()
            if len(head) != 3:
                raise ScanError(f"git cat-file could not read an object: {' '.join(head)[:100]}")
            oid, kind, size = head[0], head[1], int(head[2])
            content = proc.stdout.read(size)
            proc.stdout.read(1)
            if len(content) != size:
                raise ScanError(f"git cat-file returned a short object {oid}")
            yield oid, kind, content
    finally:
        proc.stdout.close()
        proc.wait()
        writer.join()


def tree_entries(content: bytes) -> Iterator[tuple[str, str, str]]:
    """(mode, name, oid) of every entry of a raw (SHA-1) tree object."""
    i = 0
    while i < len(content):
        space = content.index(b" ", i)
        nul = content.index(b"\0", space)
        oid = content[nul + 1 : nul + 21]
        if len(oid) != 20:
            raise ScanError("a tree object ends in the middle of an entry")
        yield content[i:space].decode(), content[space + 1 : nul].decode("utf-8", errors="replace"), oid.hex()
        i = nul + 21


def headers_and_message(content: bytes) -> tuple[list[tuple[str, str]], str]:
    """A commit's or tag's headers (continuation lines joined with newlines) and its message."""
    text = content.decode("utf-8", errors="replace")
    head, _, message = text.partition("\n\n")
    headers: list[tuple[str, str]] = []
    for line in head.split("\n"):
        if line.startswith(" ") and headers:
            headers[-1] = (headers[-1][0], headers[-1][1] + "\n" + line[1:])
        else:
            key, _, value = line.partition(" ")
            headers.append((key, value))
    return headers, message


def _topological(commits: dict[str, list[str]]) -> list[str]:
    """The new commits, parents before children (parents outside the push are ignored)."""
    order: list[str] = []
    done: set[str] = set()
    for start in commits:
        stack = [(start, False)]
        while stack:
            oid, expanded = stack.pop()
            if oid in done or oid not in commits:
                continue
            if expanded:
                done.add(oid)
                order.append(oid)
                continue
            stack.append((oid, True))
            stack.extend((p, False) for p in commits[oid] if p not in done)
    return order


def changed_blobs(commits: list[str]) -> dict[str, list[tuple[str, str]]]:
    """For each new commit: (previous blob, new blob) of every file it changes, against each parent."""
    if not commits:
        return {}
    feed = "".join(c + "\n" for c in commits).encode()
    out = git("diff-tree", "--stdin", "-r", "-m", "--no-renames", "-z", "--no-ext-diff", data=feed)
    pairs: dict[str, list[tuple[str, str]]] = {}
    tokens = out.split(b"\0")
    # Each commit's id (once per parent for merges), then ':modes old new status' and the path.
    current = ""
    i = 0
    while i < len(tokens):
        token = tokens[i].decode(errors="replace")
        if token.startswith(":"):
            meta = token[1:].split()
            if len(meta) >= 4 and meta[3] != ZERO and meta[2] != ZERO and meta[1].startswith("100"):
                pairs.setdefault(current, []).append((meta[2], meta[3]))
            i += 2
            continue
        if token.strip():
            current = token.split()[0]
        i += 1
    return pairs


# -- the scan ------------------------------------------------------------------------------


def scan_refs(updates: list[tuple[str, str, str]], scanner: Scanner) -> Result:
    """Scan the names of the refs a push updates; the result lists them as they may be shown."""
    result = Result()
    for _old, new, ref in updates:
        hits = list(scanner.scan_text(ref, "ref"))
        for _n, rule, secret in hits:
            result.findings.append(Finding("ref", new, "ref name (withheld)", rule, redact(secret)))
        result.refs.append("(a ref name holding a possible secret, withheld)" if hits else printable(ref, 150))
    return result


# One pass read top to bottom (headers, trees, baselines, blobs), each stage feeding the next
# through local maps; split up, those maps would have to travel as arguments.
def scan_push(repo: Path, result: Result, scanner: Scanner) -> Result:  # noqa: C901, PLR0912, PLR0915
    """Scan every object the push adds (see the module's description); findings go into `result`."""
    started = time.monotonic()
    carried = new_objects(repo)
    total = sum(size for _kind, size in carried.values())
    if total > MAX_SCAN_BYTES:
        raise ScanError(
            f"the push carries {total // 1024**2} MiB of new objects, more than the gate scans "
            f"({MAX_SCAN_BYTES // 1024**2} MiB); push it in parts"
        )
    for kind, _size in carried.values():
        result.counts[kind] = result.counts.get(kind, 0) + 1
    result.scanned_bytes = total
    by_kind: dict[str, list[str]] = {}
    for oid, (kind, _size) in carried.items():
        by_kind.setdefault(kind, []).append(oid)

    found: set[str] = set()  # secret values found anywhere: never shown, even inside a name

    def add(kind: str, oid: str, where: str, rule: str, secret: str) -> None:
        found.add(secret)
        result.findings.append(Finding(kind, oid, where, rule, redact(secret)))

    parents: dict[str, list[str]] = {}
    for oid, kind, content in read_objects(by_kind.get("commit", []) + by_kind.get("tag", [])):
        headers, message = headers_and_message(content)
        if kind == "commit":
            parents[oid] = [v for k, v in headers if k == "parent"]
        for key, value in headers:
            if key in STRUCTURAL[kind]:
                continue
            label = f"{key} header" if HEADER_NAME.fullmatch(key) else "an unusual header"
            for _n, rule, secret in scanner.scan_text(f"{key} {value}"):
                add(kind, oid, label, rule, secret)
        for number, rule, secret in scanner.scan_text(message):
            add(kind, oid, f"message line {number}", rule, secret)

    # Trees: every entry name; and where each new object sits, to name blobs by their path.
    up: dict[str, tuple[str, str]] = {}  # object -> (tree holding it, its name there)
    withheld: set[tuple[str, str]] = set()
    for oid, _kind, content in read_objects(by_kind.get("tree", [])):
        for index, (_mode, name, child) in enumerate(tree_entries(content)):
            hits = list(scanner.scan_text(name, "name"))
            for _n, rule, secret in hits:
                add("tree", oid, f"entry {index + 1} name (withheld)", rule, secret)
            if hits:
                withheld.add((oid, name))
            up.setdefault(child, (oid, name))

    def path_of(oid: str) -> str:
        parts = []
        while oid in up and len(parts) < 64:
            tree, name = up[oid]
            parts.append("(withheld)" if (tree, name) in withheld or any(s in name for s in found) else name)
            oid = tree
        return f"(path {printable('/'.join(reversed(parts)), 200)})" if parts else "(not in a pushed tree)"

    # Lines each changed file already held upstream (its previous version, which the gate had).
    blobs = set(by_kind.get("blob", []))
    known: dict[str, set[str]] = {}
    pairs = changed_blobs(_topological(parents))
    wanted = {old for ps in pairs.values() for old, new in ps if new in blobs and old not in blobs}
    baseline: dict[str, set[str]] = {}
    budget = MAX_BASELINE_BYTES
    for oid, _kind, content in read_objects(sorted(wanted)):
        budget -= len(content)
        if budget < 0:
            break  # beyond this, changed files are scanned whole: more findings, never fewer
        baseline[oid] = set(content.decode("utf-8", errors="replace").split("\n"))
    for commit in _topological(parents):
        for old, new in pairs.get(commit, []):
            if new in blobs:
                known.setdefault(new, set()).update(baseline.get(old) or known.get(old) or ())

    for oid, _kind, content in read_objects(sorted(blobs)):
        text = content.decode("utf-8", errors="replace")
        skip = known.get(oid) or frozenset()
        # detect-secrets picks some rules by the file's extension
        filename = up[oid][1] if oid in up else "blob"
        for number, rule, secret in scanner.scan_text(text, filename, skip):
            add("blob", oid, f"{path_of(oid)} line {number}", rule, secret)

    # A name shown in a description must not hold what was found elsewhere.
    result.findings = [Finding(f.kind, f.oid, _scrub(f.where, found), f.rule, f.redacted) for f in result.findings]
    result.seconds = time.monotonic() - started
    return result


def _scrub(text: str, found: set[str]) -> str:
    for secret in found:
        if len(secret) >= 6 and secret in text:
            text = text.replace(secret, "(withheld)")
    return text
