"""Credentials stay outside the bottle: it holds a stand-in, the egress proxy adds the real value.

For every credential an agent forwards, the bottle gets a *stand-in*: a random value made at
launch, for that bottle only, with the real value's leading prefix (`sk-ant-api03-`, `ghp_`...)
and length, so clients that check the shape accept it. The egress proxy holds the real value
in memory and puts it in place of the stand-in only in requests to the hosts the manifest
declares for that credential (`[bottles.NAME.egress.credentials]`); a request carrying the
stand-in anywhere else is refused. A credential reaches the bottle with its real value only
when the manifest lists it in the bottle's `real_credentials`.

This module decides, from the manifest alone, what the plan says about each credential and
makes the stand-ins; the Docker backend hands them to the bottle and to the proxy.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import PlanError
from .manifest import BottleDef
from .models import BottlePlan, CredentialPlan

# A stand-in has at least this many random characters, so it never occurs by chance.
MIN_RANDOM = 16
# The prefix kept from the real value: up to four short lower-case words, each ending in a dash or an
# underscore, at its start (`sk-ant-api03-`, `ghp_`, `github_pat_`, `glpat-`, `xoxb-`). Random parts
# are mostly mixed case, so this keeps the issuer's marker and (almost always) nothing of the secret.
MAX_PREFIX = 24
_PREFIX_RE = re.compile(r"^(?:[a-z][a-z0-9]{0,7}[-_]){1,4}")


def _passthrough_hits(route_hosts: list[str], passthrough: list[str]) -> list[str]:
    """Passthrough hosts a credential is declared for (exactly, or through a wildcard)."""
    hits = []
    for p in passthrough:
        for h in route_hosts:
            if p == h or (h.startswith("*.") and p.endswith(h[1:])):
                hits.append(p)
                break
    return hits


def credential_plans(
    bottle: BottleDef, names: list[str], environ: Mapping[str, str]
) -> tuple[list[CredentialPlan], list[str]]:
    """What the plan says about each forwarded credential, and the warnings that go with it."""
    plans: list[CredentialPlan] = []
    warnings: list[str] = []
    egress = bottle.egress if bottle.network == "egress" else None
    for name in names:
        present = name in environ
        route = egress.route(name) if egress is not None else None
        hosts = list(route.hosts) if route is not None else []
        body = bool(route and route.body)
        if name in bottle.real_credentials:
            plans.append(
                CredentialPlan(
                    name=name,
                    present=present,
                    in_bottle="real value",
                    substituted_for=[],
                    body=False,
                    note="the bottle holds the real value (real_credentials): any process in it can read it and "
                    + (
                        f"the proxy refuses intercepted requests that carry it to hosts other than {', '.join(hosts)}"
                        if hosts
                        else "the proxy refuses every intercepted request that carries it"
                    ),
                )
            )
            continue
        blocked = _passthrough_hits(hosts, egress.passthrough) if egress is not None else []
        refused = None
        if blocked:
            refused = (
                f"credential {name} is declared for {', '.join(blocked)}, whose TLS the proxy passes through "
                "unopened, so it cannot put the real value in place of the stand-in there. Remove "
                f"{', '.join(blocked)} from egress.passthrough, or hand the bottle the real value with "
                f'real_credentials = ["{name}"] in [bottles.NAME]'
            )
        if not hosts:
            note = (
                "the bottle holds a stand-in that works nowhere: no hosts are declared for it in "
                "[bottles.NAME.egress.credentials]"
            )
            if present:
                warnings.append(
                    f"credential {name} has no hosts in egress.credentials: the bottle gets a stand-in that no host "
                    "accepts (declare its hosts, or list it in real_credentials if the bottle needs the value itself)"
                )
        else:
            where = "headers and bodies" if body else "headers"
            note = (
                f"the bottle holds a random stand-in of the same shape; the proxy puts the real value in its place in "
                f"the {where} of requests to {', '.join(hosts)} and refuses requests that carry it anywhere else"
            )
        plans.append(
            CredentialPlan(
                name=name,
                present=present,
                in_bottle="stand-in",
                substituted_for=hosts,
                body=body,
                note=note,
                refused=refused,
            )
        )
    return plans, warnings


def check_launchable(plan: BottlePlan) -> None:
    """Refuse a plan with a credential the proxy cannot substitute (the plan says why)."""
    refused = [c.refused for c in plan.credentials if c.refused]
    if refused:
        raise PlanError("launch refused: " + "; ".join(refused))


def _alphabet(tail: str) -> str:
    """Characters to draw a stand-in's random part from: the classes the real value's tail uses."""
    chars = ""
    for klass in (string.ascii_lowercase, string.ascii_uppercase, string.digits):
        if any(c in klass for c in tail):
            chars += klass
    chars += "".join(sorted({c for c in tail if c in "-_"}))
    return chars if len(chars) >= 16 else string.ascii_letters + string.digits


def make_stand_in(value: str) -> str:
    """A random value shaped like `value`: its word prefix, then random characters up to its length.

    Never equal to `value`, never containing it; at least MIN_RANDOM random characters, so a value
    shorter than that gets a longer stand-in.
    """
    m = _PREFIX_RE.match(value)
    prefix = m.group(0)[:MAX_PREFIX] if m else ""
    if len(value) - len(prefix) < MIN_RANDOM:
        prefix = prefix[: max(0, len(value) - MIN_RANDOM)]
    tail = value[len(prefix) :]
    alphabet = _alphabet(tail)
    size = max(len(tail), MIN_RANDOM)
    while True:
        stand_in = prefix + "".join(secrets.choice(alphabet) for _ in range(size))
        if stand_in != value and value not in stand_in:
            return stand_in


@dataclass(frozen=True)
class Substitution:
    """One credential as the proxy holds it: never written anywhere the engine shows."""

    name: str
    stand_in: str
    value: str
    hosts: list[str]
    body: bool

    def for_proxy(self) -> dict[str, object]:
        return {
            "name": self.name,
            "stand_in": self.stand_in,
            "value": self.value,
            "hosts": self.hosts,
            "body": self.body,
        }


def bottle_values(
    credentials: list[CredentialPlan], environ: Mapping[str, str]
) -> tuple[dict[str, str], list[Substitution]]:
    """The variables the bottle gets for a plan's credentials (fresh stand-ins), and what the proxy must hold."""
    env: dict[str, str] = {}
    subs: list[Substitution] = []
    for c in credentials:
        value = environ.get(c.name)
        if value is None:
            continue
        if c.in_bottle == "real value":
            env[c.name] = value
            continue
        stand_in = make_stand_in(value)
        env[c.name] = stand_in
        subs.append(Substitution(c.name, stand_in, value, list(c.substituted_for), c.body))
    return env, subs
