"""The reaper of one kept bottle: removes the bottle and everything labelled with it at its deadline.

Runs in a small container of its own (no network, read-only root, no capabilities)
with the engine's socket, started by the server next to each bottle. Its deadline is
the number at the end of its own container name (`bottle-mcp-keep-<bottle>-<epoch>`):
the server moves it by renaming the container, one engine call that needs nothing
inside this container, and anyone can read it from the engine. When the deadline
passes it removes every container, volume and network labelled with its bottle id,
then itself. Nothing it reads comes from the bottle.

Standard library only. Arguments: the bottle id.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
import urllib.parse

SOCK = "/run/bottle-mcp/engine.sock"
MANAGED = "dev.bottle-mcp.managed=true"
POLL_S = 2.0


class _Conn(http.client.HTTPConnection):
    def __init__(self) -> None:
        super().__init__("localhost", timeout=30)

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(SOCK)
        self.sock = s


def call(method: str, path: str, query: dict[str, str] | None = None) -> tuple[int, object]:
    conn = _Conn()
    try:
        conn.request(method, path + ("?" + urllib.parse.urlencode(query) if query else ""))
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    data: object = None
    if body and "json" in (resp.getheader("Content-Type") or ""):
        data = json.loads(body)
    return resp.status, data


def deadline(me: str) -> float | None:
    """The deadline in this container's name; None when it cannot be read right now."""
    status, info = call("GET", f"/containers/{me}/json")
    if status != 200 or not isinstance(info, dict):
        return None
    tail = str(info.get("Name", "")).rsplit("-", 1)[-1]
    return float(tail) if tail.isdigit() else None


def remove_all(bottle: str, me: str) -> None:
    flt = json.dumps({"label": [MANAGED, f"dev.bottle-mcp.bottle={bottle}"]})
    _, rows = call("GET", "/containers/json", {"all": "1", "filters": flt})
    for row in rows if isinstance(rows, list) else []:
        cid = str(row.get("Id", ""))
        if cid and not cid.startswith(me):
            call("DELETE", f"/containers/{cid}", {"force": "1"})
    # The engine may hold a volume or network for a moment after the containers that used it went.
    for _ in range(30):
        left = 0
        _, vols = call("GET", "/volumes", {"filters": flt})
        for vol in (vols or {}).get("Volumes") or [] if isinstance(vols, dict) else []:
            status, _ = call("DELETE", f"/volumes/{vol['Name']}", {"force": "1"})
            left += status not in (204, 404)
        _, nets = call("GET", "/networks", {"filters": flt})
        for net in nets if isinstance(nets, list) else []:
            status, _ = call("DELETE", f"/networks/{net['Id']}")
            left += status not in (204, 404)
        if not left:
            break
        time.sleep(0.5)


def main() -> None:
    bottle = sys.argv[1]
    me = socket.gethostname()  # the engine's short id of this container
    while True:
        try:
            due = deadline(me)
        except OSError:
            due = None  # the engine is away (restarting?): ask again
        now = time.time()
        if due is not None and now >= due:
            break
        time.sleep(POLL_S if due is None else min(POLL_S, max(0.1, due - now)))
    while True:
        try:
            remove_all(bottle, me)
            call("DELETE", f"/containers/{me}", {"force": "1"})
        except OSError:
            pass
        time.sleep(POLL_S)  # still here: the engine refused; try again


if __name__ == "__main__":
    main()
