# A hostile supervisor (bottle-mcp-exec-channel): it holds the key and seals its frames like the
# real one, then floods. Command "flood-live": one byte of output per frame, one write per frame,
# never an exit. "flood-stale": the command exits at once, and output for it keeps coming.
import hashlib
import hmac
import json
import os
import struct

H = struct.Struct(">BII")
TAG = 16


def read_exact(n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = os.read(0, n - len(out))
        if not data:
            raise SystemExit(0)
        out += data
    return out


key = read_exact(H.size + 32)[H.size :]
seq = {"out": 0, "in": 0}


def send(kind: int, rid: int, payload: bytes = b"") -> None:
    frame = H.pack(kind, rid, len(payload)) + payload
    tag = hmac.new(key, b"S" + seq["out"].to_bytes(8, "big") + frame, hashlib.sha256).digest()[:TAG]
    seq["out"] += 1
    os.write(1, frame + tag)


def unmask(seq: int, data: bytes) -> bytes:
    stream = hashlib.shake_256(key + b"E" + seq.to_bytes(8, "big")).digest(len(data))
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


send(10, 0, json.dumps({"v": 1, "pid": os.getpid(), "sealed": True}).encode())
while True:
    kind, rid, size = H.unpack(read_exact(H.size))
    payload = read_exact(size + TAG)[:size]
    if kind == 1:
        payload = unmask(seq["in"], payload)
    seq["in"] += 1
    if kind != 1:
        continue
    cmd = json.loads(payload)["cmd"]
    send(11, rid, json.dumps({"pid": 4242}).encode())
    if cmd == "flood-stale":
        send(14, rid, json.dumps({"code": 0, "out": 0, "err": 0}).encode())
    if cmd.startswith("flood"):
        try:
            while True:
                send(12, rid, b"x")
        except OSError:
            raise SystemExit(0) from None
    send(14, rid, json.dumps({"code": 0, "out": 0, "err": 0}).encode())
