"""The audit trail survives the bottle: a flood of refused requests with huge headers cannot push the
allowed decision that mattered out of egress_log, nor make a result larger than the output cap."""

from __future__ import annotations

import json

import anyio
import pytest

from bottle_mcp.backends.docker.bottle import DockerBottle
from bottle_mcp.models import EgressDecision
from bottle_mcp.service import BottleService

pytestmark = pytest.mark.anyio

FLOOD = 700
VARIED = 50
HUGE = 60_000

# Runs in the bottle: one allowed request, then FLOOD refused ones whose Host header is 60 KB long
# (the refusal's reason quotes it), then VARIED refused ones to distinct blocked paths.
ATTACK = f"""
import socket

def ask(request):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=30)
    s.sendall(request)
    data = b""
    while b"\\r\\n\\r\\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.split(b"\\r\\n", 1)[0].decode()

print("first", ask(b"GET http://allowed.test/the-one-that-matters HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n"))
huge = b"x" * {HUGE} + b".test"
codes = set()
for _ in range({FLOOD}):
    codes.add(ask(b"GET http://allowed.test/flood HTTP/1.1\\r\\nHost: " + huge + b"\\r\\n\\r\\n"))
for i in range({VARIED}):
    codes.add(ask(b"GET http://blocked.test/varied-%d HTTP/1.1\\r\\nHost: blocked.test\\r\\n\\r\\n" % i))
print("flood", sorted(codes))
"""


async def _all(service: BottleService, bottle_id: str) -> list[EgressDecision]:
    """Every record, page by page from the oldest, each page within the output cap."""
    out: list[EgressDecision] = []
    cursor: str | None = "0"
    while cursor is not None:
        log = await service.egress_log(bottle_id, cursor=cursor, limit=1000)
        assert len(log.model_dump_json()) <= service.output_cap
        assert log.first == int(cursor)
        out += log.decisions
        assert log.next_cursor is None or int(log.next_cursor) > int(cursor)
        cursor = log.next_cursor
    return out


async def test_a_flood_of_huge_denials_cannot_evict_the_allowed_decision_or_break_the_cap(
    sec_service: BottleService, net_bottle: DockerBottle
) -> None:
    res = await net_bottle.exec("python3 -", timeout_s=300, workdir=None, output_cap=65536, stdin=ATTACK.encode())
    assert " 200 " in res.stdout.split("flood", 1)[0], res.stdout + res.stderr
    assert "403" in res.stdout.split("flood", 1)[1], res.stdout
    with anyio.fail_after(30):
        while True:  # the proxy writes the counts of repeated denials twice a second
            log = await sec_service.egress_log(net_bottle.id)
            flood = [d for d in log.decisions if d.path == "/flood"]
            if flood and flood[0].count >= FLOOD:
                break
            await anyio.sleep(0.2)
    # The default result (the latest records) is held to the output cap and still shows the allowed request.
    assert len(log.model_dump_json()) <= sec_service.output_cap
    assert any(d.action == "allow" and d.path == "/the-one-that-matters" for d in log.decisions)
    # The 700 identical refusals are one record with a count; its reason, which quotes the 60 KB header,
    # is clipped, and says how long it was.
    (agg,) = flood
    assert agg.action == "deny" and agg.count == FLOOD and agg.last_time is not None
    assert len(agg.reason) <= 203 and agg.lengths["reason"] > HUGE
    assert log.denied >= FLOOD + VARIED and log.dropped == 0
    # Paging from the oldest gives every record once; no field of any is longer than the clip.
    every = await _all(sec_service, net_bottle.id)
    assert len(every) == log.total
    assert sum(1 for d in every if d.path == "/the-one-that-matters") == 1
    assert sum(1 for d in every if d.path and d.path.startswith("/varied-")) == VARIED
    for d in every:
        for value in json.loads(d.model_dump_json()).values():
            assert not isinstance(value, str) or len(value) <= 203
    # A small limit pages too.
    first = await sec_service.egress_log(net_bottle.id, cursor="0", limit=3)
    assert len(first.decisions) == 3 and first.next_cursor == "3"
