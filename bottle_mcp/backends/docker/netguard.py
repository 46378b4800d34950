"""Addresses the egress proxy must refuse whatever they look like: the host's and the engine's networks'.

Private ranges are refused by the proxy anyway (egress_addrs.py in its image). These lists
add what a range check cannot know: a public address on one of this host's interfaces, a
bridge the engine was told to build on a public range, and the gateways of all of them.
"""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path
from typing import Any


def host_addresses(proc: Path = Path("/proc")) -> list[str]:
    """Every address of this host's interfaces (IPv4 from fib_trie's local routes, IPv6 from if_inet6)."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        last = ""
        for line in (proc / "net" / "fib_trie").read_text().splitlines():
            text = line.strip()
            if text.startswith("|--"):
                last = text[3:].strip()
            elif text == "/32 host LOCAL" and last:
                found.add(last)
    with contextlib.suppress(OSError):
        for line in (proc / "net" / "if_inet6").read_text().splitlines():
            hexaddr = line.split()[0] if line.split() else ""
            if len(hexaddr) == 32:
                found.add(str(ipaddress.IPv6Address(int(hexaddr, 16))))
    return sorted(found)


def engine_networks(client: Any) -> list[str]:
    """Subnets and gateways of every network the engine has (blocking: run it through the engine helper)."""
    found: set[str] = set()
    for net in client.api.networks():
        for conf in (net.get("IPAM") or {}).get("Config") or []:
            for key in ("Subnet", "Gateway", "IPRange"):
                value = conf.get(key)
                if value:
                    with contextlib.suppress(ValueError):
                        found.add(str(ipaddress.ip_network(value, strict=False)))
    return sorted(found)
