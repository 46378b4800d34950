"""Which addresses the egress proxy may connect to: public ones, and what the manifest allows.

Standard library only (it runs in the sidecar, and the server's tests import it).
An address is refused unless it is public; the manifest's `allow_private` entries
(CIDRs, each optionally with a port) let a bottle reach named non-public ones.

Not public:
- whatever Python's `ipaddress` does not call global, and also (its gaps)
  multicast, reserved, unspecified, loopback, link-local, site-local, and
  100.64.0.0/10 (CGNAT) in every Python version;
- IPv6 forms that carry an IPv4 address (IPv4-mapped ::ffff:0:0/96, the old
  IPv4-compatible ::/96, NAT64 64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16,
  Teredo 2001::/32): the IPv4 address inside is judged, and the local-use NAT64
  prefix is refused outright;
- the addresses and networks the server names: every address of the host and
  every subnet and gateway of the engine's networks (a public range on a bridge
  is still the host's).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Spelled out rather than trusted to `is_global`, whose lists changed between Python versions.
_NOT_PUBLIC = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/96",
        "::ffff:0:0/96",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_RULE = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+(?:/\d{1,3})?)\]|(?P<v4>[0-9.]+(?:/\d{1,2})?))(?::(?P<port>\d{1,5}))?$")


def parse_rule(entry: str) -> tuple[Network, int | None]:
    """'10.20.0.0/16:443', '10.0.0.5', '[fd00::/8]:8443', '[::1]' -> (network, port or None); ValueError if bad."""
    m = _RULE.match(entry.strip())
    if m is None:
        raise ValueError(
            f"{entry!r} is not a CIDR with an optional port; write e.g. '10.20.0.0/16', '10.20.0.0/16:443' "
            "or '[fd00::/8]:443' (IPv6 in brackets)"
        )
    net = ipaddress.ip_network(m.group("v6") or m.group("v4"), strict=False)
    port = m.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise ValueError(f"{entry!r} has port {port}; ports run from 1 to 65535")
    return net, int(port) if port is not None else None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found += list(ip.teredo)
    packed = int(ip)
    if ip in _NAT64 or int(ip) >> 32 == 0:  # NAT64 well-known prefix, or the old IPv4-compatible form
        found.append(ipaddress.IPv4Address(packed & 0xFFFFFFFF))
    return found


def not_public(ip: Address) -> str | None:
    """Why `ip` is not a public address, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in embedded_ipv4(ip):
            why = not_public(inner)
            if why is not None:
                return f"it carries the IPv4 address {inner}, and {why}"
        if ip.ipv4_mapped is not None or ip in _NAT64:
            return None  # another spelling of a public IPv4 address
    for net in _NOT_PUBLIC:
        if ip.version == net.version and ip in net:
            return f"it is in {net}, which is not public"
    for attr in ("is_loopback", "is_link_local", "is_multicast", "is_private", "is_reserved", "is_unspecified"):
        if getattr(ip, attr):
            return f"it is {attr[3:].replace('_', '-')}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "it is site-local"
    if not ip.is_global:
        return "it is not a global address"
    return None


class AddressPolicy:
    """The proxy's decision on one address: public and not the host's, or allowed by the manifest."""

    def __init__(self, allow_private: Iterable[str] = (), denied: Iterable[str] = ()) -> None:
        self.allow = [parse_rule(e) for e in allow_private]
        self.denied: list[Network] = []
        for d in denied:
            try:
                self.denied.append(ipaddress.ip_network(d.strip("[]"), strict=False))
            except ValueError:
                continue

    def refusal(self, address: str, port: int) -> str | None:
        """None when the proxy may connect to address:port, else why not."""
        try:
            ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
        except ValueError:
            return f"{address!r} is not an IP address"
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        # An IPv4 rule also covers its IPv4-mapped form (::ffff:a.b.c.d), never the other embeddings.
        allowable: list[Address] = [ip] if mapped is None else [ip, mapped]
        for net, allowed_port in self.allow:
            if allowed_port in (None, port) and any(f.version == net.version and f in net for f in allowable):
                return None
        forms: list[Address] = [ip]
        if isinstance(ip, ipaddress.IPv6Address):
            forms += embedded_ipv4(ip)
        for net in self.denied:
            if any(f.version == net.version and f in net for f in forms):
                return f"{ip} belongs to the host or to one of the engine's networks ({net})"
        why = not_public(ip)
        if why is not None:
            return f"{ip} is not a public address ({why}); a manifest may allow it with egress.allow_private"
        return None
