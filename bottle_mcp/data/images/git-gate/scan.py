"""The git gate's secret scan: every line a push adds, in every new commit, plus messages.

Runs inside the gate (on the image's own Python with detect-secrets). The
configuration is the gate's alone: detect-secrets' plugins are called directly,
so neither its inline allow comments (`pragma: allowlist secret`) nor any
baseline or allowlist file in the pushed tree has any effect, and the rules
below cover credentials that detect-secrets does not know (Anthropic keys) and
the very credentials the server forwards into the bottle (matched by a short
prefix, length and hash: the gate never holds them).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ZERO = "0" * 40
MAX_PATCH_BYTES = 64 * 1024**2

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


class ScanError(Exception):
    """The push could not be scanned; the gate refuses it (fail closed)."""


@dataclass(frozen=True)
class Finding:
    commit: str
    path: str
    line: int
    rule: str
    redacted: str

    def describe(self) -> str:
        where = self.path if self.line == 0 else f"{self.path} line {self.line}"
        return f"commit {self.commit[:12]}: {where}: {self.rule}: {self.redacted}"


def redact(value: str) -> str:
    """Enough to recognise which secret it was, never enough to use it."""
    if len(value) >= 16:
        return f"{value[:4]}... ({len(value)} characters, redacted)"
    return f"({len(value)} characters, redacted)"


class Scanner:
    def __init__(self, credentials: list[dict[str, Any]]) -> None:
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

        self.plugins = [
            cls() for cls in get_mapping_from_secret_type_to_class().values() if cls.__name__ not in SKIPPED_PLUGINS
        ]
        self.credentials = credentials

    def scan_line(self, path: str, line: str) -> Iterator[tuple[str, str]]:
        """(rule, secret) pairs found in one added line."""
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
        for plugin in self.plugins:
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


def git(*args: str, data: bytes | None = None) -> bytes:
    proc = subprocess.run(["git", *args], input=data, capture_output=True, check=False)
    if proc.returncode != 0:
        raise ScanError(f"git {args[0]} failed: {proc.stderr.decode(errors='replace').strip()[:300]}")
    return proc.stdout


def new_commits(news: list[str]) -> list[str]:
    """Commits reachable from the pushed tips and from no ref the gate already has."""
    tips = [n for n in news if n != ZERO]
    if not tips:
        return []
    out = git("rev-list", "--topo-order", "--reverse", *tips, "--not", "--all")
    return out.decode().split()


def _unquote(path: str) -> str:
    """Undo git's C-style quoting of unusual file names in patch headers."""
    if not (path.startswith('"') and path.endswith('"')):
        return path
    raw = path[1:-1].encode("latin-1", errors="replace")
    out = bytearray()
    i = 0
    escapes = {ord("n"): 10, ord("t"): 9, ord('"'): 34, ord("\\"): 92, ord("a"): 7, ord("b"): 8, ord("f"): 12}
    while i < len(raw):
        c = raw[i]
        if c == 92 and i + 1 < len(raw):
            nxt = raw[i + 1]
            if 48 <= nxt <= 55 and i + 3 < len(raw) + 1:
                out.append(int(raw[i + 1 : i + 4], 8) & 0xFF)
                i += 4
                continue
            out.append(escapes.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return out.decode(errors="replace")


def added_lines(patch: str) -> Iterator[tuple[str, int, str]]:
    """(path, line number, text) of every added line in a -U0 patch."""
    path = "?"
    in_header = False
    number = 0
    for line in patch.split("\n"):
        if line.startswith("diff --git "):
            in_header = True
            continue
        if in_header:
            # git ends a header's name with a tab when the name holds a space
            if line.startswith("+++ "):
                target = line[4:].removesuffix("\t")
                path = _unquote(target)[2:] if target != "/dev/null" else path
                continue
            if line.startswith("--- "):
                source = line[4:].removesuffix("\t")
                path = _unquote(source)[2:] if source != "/dev/null" else path
                continue
            if not line.startswith("@@"):
                continue
            in_header = False
        if line.startswith("@@"):
            m = re.match(r"@@ -\S+ \+(\d+)", line)
            number = int(m.group(1)) if m else 0
            continue
        if line.startswith("+"):
            yield path, number, line[1:]
            number += 1


def _message(kind: str, oid: str) -> str:
    body = git("cat-file", kind, oid).decode(errors="replace")
    _, _, message = body.partition("\n\n")
    return message


def scan_push(updates: list[tuple[str, str, str]], scanner: Scanner) -> tuple[list[str], list[Finding]]:
    """Scan what a push adds. Returns the new commits and the findings (empty: clean)."""
    findings: list[Finding] = []
    commits = new_commits([new for _old, new, _ref in updates])
    total = 0
    for commit in commits:
        parents = git("rev-list", "--parents", "-n", "1", commit).decode().split()[1:]
        common = ["-r", "-p", "-U0", "-a", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames"]
        common += ["--src-prefix=a/", "--dst-prefix=b/"]
        # A merge is compared with its first parent: what it brings into the branch,
        # its conflict resolutions included. Its other parents' new commits are scanned on their own.
        args = [*common, parents[0], commit] if parents else [*common, "--root", commit]
        patch = git("diff-tree", *args)
        total += len(patch)
        if total > MAX_PATCH_BYTES:
            raise ScanError(f"the push adds more than {MAX_PATCH_BYTES // 1024**2} MiB of changes; push it in parts")
        for path, number, text in added_lines(patch.decode(errors="replace")):
            for rule, secret in scanner.scan_line(path, text):
                findings.append(Finding(commit, path, number, rule, redact(secret)))
        for rule, secret in _scan_text(scanner, _message("commit", commit)):
            findings.append(Finding(commit, "(commit message)", 0, rule, redact(secret)))
    for _old, new, ref in updates:
        if new != ZERO and git("cat-file", "-t", new).strip() == b"tag":
            for rule, secret in _scan_text(scanner, _message("tag", new)):
                findings.append(Finding(new, f"(message of tag {ref})", 0, rule, redact(secret)))
    return commits, findings


def _scan_text(scanner: Scanner, text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        yield from scanner.scan_line("message.txt", line)
