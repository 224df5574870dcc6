"""A stand-in IOTA Stardust node for tests: the core REST API (``/api/core/v2``) the iota-sdk client uses.

Run it as its own process::

    python tests/iota_node.py --port 14265 [--milestone-interval 0.2]

What it does, faithfully enough for the real client:

* ``GET /health``, ``GET /api/core/v2/info`` (protocol parameters with ``minPowScore`` 0, so no proof of
  work), ``GET /api/core/v2/tips``;
* ``POST /api/core/v2/blocks`` takes a block as raw bytes (``application/vnd.iota.serializer-v1``, what the
  client sends) or as JSON, parses it per TIP-24 (block) and TIP-23 (tagged data payload), refuses anything
  else, and names it ``BLAKE2b-256(block bytes)`` -- the Stardust block id;
* ``GET /api/core/v2/blocks/{id}`` (JSON, or the raw bytes when asked for the serializer media type),
  ``GET /api/core/v2/blocks/{id}/metadata`` (``referencedByMilestoneIndex`` once a milestone referenced the
  block, ``ledgerInclusionState: noTransaction``), ``GET /api/core/v2/milestones/by-index/{i}``;
* a milestone every ``--milestone-interval`` seconds referencing every pending block.

Test controls (not part of the Stardust API): ``POST /admin/outage {"on": bool}`` answers 503 to everything
else while on (``"code"`` and ``"message"``, if given, the status and error message it answers instead);
``POST /admin/milestones {"paused": bool}`` stops issuing milestones;
``POST /admin/stall {"on": bool}`` holds every API request unanswered (up to 30 s) while on;
``GET /admin/blocks/{id}/raw-hash`` returns the hash the node computed over the bytes it received;
``GET /admin/stats`` lists the Content-Type of every block POST and the paths of the requests the stall holds;
``POST /admin/oversize {"bytes": n}`` answers every raw block GET with ``n`` zero bytes (a hostile node; 0: off);
``POST /admin/pruned {"on": bool}`` answers 404 to every milestone lookup (a node that pruned them).

Not modelled: gossip, PoW scoring, transactions/outputs, the indexer, real milestone signatures (the
signature fields have the right shape; the client does not verify them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RAW = "application/vnd.iota.serializer-v1"
PROTOCOL_VERSION = 2
TAGGED_DATA = 5
MAX_BLOCK = 32768  # TIP-24: maximum block length in bytes
NETWORK = "streams-standin"


class BadBlock(ValueError):
    pass


def blake2b256(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def parse_block(raw: bytes) -> dict[str, Any]:
    """TIP-24 block with an optional TIP-23 tagged-data payload -> the JSON form of the core API."""
    if len(raw) > MAX_BLOCK:
        raise BadBlock("block too large")
    try:
        pos = 0
        version = raw[pos]
        pos += 1
        if version != PROTOCOL_VERSION:
            raise BadBlock("unsupported protocol version")
        count = raw[pos]
        pos += 1
        if not 1 <= count <= 8:
            raise BadBlock("a block has 1 to 8 parents")
        parents = [raw[pos + 32 * i : pos + 32 * (i + 1)] for i in range(count)]
        pos += 32 * count
        if any(len(p) != 32 for p in parents) or parents != sorted(set(parents)):
            raise BadBlock("parents must be sorted and unique")
        (plen,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        payload: dict[str, Any] | None = None
        if plen:
            body = raw[pos : pos + plen]
            if len(body) != plen:
                raise BadBlock("truncated payload")
            pos += plen
            (ptype,) = struct.unpack_from("<I", body, 0)
            if ptype != TAGGED_DATA:
                raise BadBlock(f"payload type {ptype} not supported by this node")
            tlen = body[4]
            tag = body[5 : 5 + tlen]
            (dlen,) = struct.unpack_from("<I", body, 5 + tlen)
            data = body[9 + tlen :]
            if tlen > 64 or len(tag) != tlen or len(data) != dlen:
                raise BadBlock("malformed tagged data payload")
            payload = {"type": TAGGED_DATA, "tag": "0x" + tag.hex(), "data": "0x" + data.hex()}
        (nonce,) = struct.unpack_from("<Q", raw, pos)
        pos += 8
    except (IndexError, struct.error) as exc:
        raise BadBlock("truncated block") from exc
    if pos != len(raw):
        raise BadBlock("trailing bytes after the block")
    block: dict[str, Any] = {
        "protocolVersion": version,
        "parents": ["0x" + p.hex() for p in parents],
        "nonce": str(nonce),
    }
    if payload is not None:
        block["payload"] = payload
    return block


def serialize_block(block: dict[str, Any]) -> bytes:
    """The inverse of :func:`parse_block`, for blocks posted as JSON."""
    parents = [bytes.fromhex(p.removeprefix("0x")) for p in block["parents"]]
    out = bytes([int(block["protocolVersion"]), len(parents)]) + b"".join(parents)
    payload = block.get("payload")
    if payload:
        if int(payload["type"]) != TAGGED_DATA:
            raise BadBlock("payload type not supported by this node")
        tag = bytes.fromhex(payload.get("tag", "0x").removeprefix("0x"))
        data = bytes.fromhex(payload.get("data", "0x").removeprefix("0x"))
        body = struct.pack("<IB", TAGGED_DATA, len(tag)) + tag + struct.pack("<I", len(data)) + data
        out += struct.pack("<I", len(body)) + body
    else:
        out += struct.pack("<I", 0)
    return out + struct.pack("<Q", int(block.get("nonce", "0")))


class Node:
    """The tangle state: blocks, their metadata and milestones.  One lock guards everything."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.blocks: dict[bytes, bytes] = {}  # id -> raw bytes
        self.referenced: dict[bytes, int] = {}  # id -> milestone index
        self.pending: list[bytes] = []
        self.milestones: list[dict[str, Any]] = []  # index i is milestones[i - 1]
        self.outage = False
        self.pruned = False
        self.outage_code = 503
        self.outage_message = "service unavailable (simulated outage)"
        self.oversize = 0  # > 0: every raw block GET is answered with this many zero bytes
        self.post_types: list[str] = []  # Content-Type of every block POST, to show what the client sends
        self.paused = False
        # cleared: API requests stall (a node that accepts connections but never answers)
        self.flowing = threading.Event()
        self.flowing.set()
        self.held: list[str] = []  # paths of the API requests held by the stall now
        self.started = int(time.time())
        self.issue_milestone(force=True)  # milestone 1, so the node is synced from the start

    def issue_milestone(self, force: bool = False) -> None:
        with self.lock:
            if self.paused or not (force or self.pending):
                return
            index = len(self.milestones) + 1
            prev = self.milestones[-1]["_id"] if self.milestones else bytes(32)
            parents = sorted(self.pending[-8:]) or [bytes(32)]
            inclusion = blake2b256(b"".join(sorted(self.pending)))
            for b in self.pending:
                self.referenced[b] = index
            self.pending = []
            ts = max(int(time.time()), self.milestones[-1]["timestamp"] if self.milestones else 0)
            ms_id = blake2b256(struct.pack("<II", index, ts) + prev + b"".join(parents))
            self.milestones.append({
                "type": 7,
                "index": index,
                "timestamp": ts,
                "protocolVersion": PROTOCOL_VERSION,
                "previousMilestoneId": "0x" + prev.hex(),
                "parents": ["0x" + p.hex() for p in parents],
                "inclusionMerkleRoot": "0x" + inclusion.hex(),
                "appliedMerkleRoot": "0x" + bytes(32).hex(),
                "signatures": [
                    {"type": 0, "publicKey": "0x" + bytes(32).hex(), "signature": "0x" + bytes(64).hex()}
                ],
                "_id": ms_id,
            })

    def info(self) -> dict[str, Any]:
        with self.lock:
            last = self.milestones[-1]
            ms = {"index": last["index"], "timestamp": last["timestamp"],
                  "milestoneId": "0x" + last["_id"].hex()}
        return {
            "name": "streams-standin",
            "version": "2.0.0",
            "status": {"isHealthy": True, "latestMilestone": ms, "confirmedMilestone": ms, "pruningIndex": 0},
            "supportedProtocolVersions": [PROTOCOL_VERSION],
            "protocol": {
                "version": PROTOCOL_VERSION,
                "networkName": NETWORK,
                "bech32Hrp": "rms",
                "minPowScore": 0,
                "belowMaxDepth": 15,
                "rentStructure": {"vByteCost": 100, "vByteFactorData": 1, "vByteFactorKey": 10},
                "tokenSupply": "1813620509061365",
            },
            "pendingProtocolParameters": [],
            "baseToken": {"name": "Shimmer", "tickerSymbol": "SMR", "unit": "SMR", "subunit": "glow",
                          "decimals": 6, "useMetricPrefix": False},
            "metrics": {"blocksPerSecond": 0.0, "referencedBlocksPerSecond": 0.0, "referencedRate": 0.0},
            "features": [],
        }

    def tips(self) -> list[str]:
        with self.lock:
            tips = self.pending[-8:] or [self.milestones[-1]["_id"]]
            return ["0x" + t.hex() for t in sorted(tips)]

    def add(self, raw: bytes) -> bytes:
        parse_block(raw)
        block_id = blake2b256(raw)  # Stardust: the block id is BLAKE2b-256 of the serialized block
        with self.lock:
            if block_id not in self.blocks:
                self.blocks[block_id] = raw
                self.pending.append(block_id)
        return block_id


class Handler(BaseHTTPRequestHandler):
    node: Node
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: Any = None, ctype: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._send(code, {"error": {"code": str(code), "message": message}})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _block_id(self, text: str) -> bytes | None:
        try:
            b = bytes.fromhex(text.removeprefix("0x"))
        except ValueError:
            return None
        return b if len(b) == 32 else None

    def _stall(self) -> None:
        if not self.path.startswith("/admin/"):
            with self.node.lock:
                self.node.held.append(self.path)
            try:
                self.node.flowing.wait(30)
            finally:
                with self.node.lock:
                    self.node.held.remove(self.path)

    def do_POST(self) -> None:
        node = self.node
        body = self._body()
        if self.path == "/admin/stall":
            if json.loads(body)["on"]:
                node.flowing.clear()
            else:
                node.flowing.set()
            return self._send(200, {"stall": not node.flowing.is_set()})
        self._stall()
        if self.path == "/admin/outage":
            req = json.loads(body)
            node.outage = bool(req["on"])
            node.outage_code = int(req.get("code", 503))
            node.outage_message = str(req.get("message", "service unavailable (simulated outage)"))
            return self._send(200, {"outage": node.outage})
        if self.path == "/admin/oversize":
            node.oversize = int(json.loads(body)["bytes"])
            return self._send(200, {"oversize": node.oversize})
        if self.path == "/admin/pruned":
            node.pruned = bool(json.loads(body)["on"])
            return self._send(200, {"pruned": node.pruned})
        if self.path == "/admin/milestones":
            with node.lock:
                node.paused = bool(json.loads(body)["paused"])
            return self._send(200, {"paused": node.paused})
        if node.outage:
            return self._error(node.outage_code, node.outage_message)
        if self.path != "/api/core/v2/blocks":
            return self._error(404, "not found")
        ctype = self.headers.get("Content-Type") or ""
        with node.lock:
            node.post_types.append(ctype)
        try:
            raw = body if ctype.startswith(RAW) else serialize_block(json.loads(body))
            block_id = node.add(raw)
        except (BadBlock, ValueError, KeyError, TypeError) as exc:
            return self._error(400, f"invalid block: {exc}")
        self.send_response(201)
        data = json.dumps({"blockId": "0x" + block_id.hex()}).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Location", "/api/core/v2/blocks/0x" + block_id.hex())
        self.end_headers()
        self.wfile.write(data)
        return None

    def do_GET(self) -> None:
        node = self.node
        self._stall()
        path = self.path.split("?", 1)[0]
        if node.outage and not path.startswith("/admin/"):
            return self._error(node.outage_code, node.outage_message)
        parts = [p for p in path.split("/") if p]
        if path == "/health":
            return self._send(200, b"", "text/plain")
        if path == "/api/core/v2/info":
            return self._send(200, node.info())
        if path == "/api/core/v2/tips":
            return self._send(200, {"tips": node.tips()})
        if parts[:4] == ["api", "core", "v2", "blocks"] and len(parts) in (5, 6):
            block_id = self._block_id(parts[4])
            with node.lock:
                raw = node.blocks.get(block_id) if block_id else None
                ref = node.referenced.get(block_id) if block_id else None
            if raw is None or block_id is None:
                return self._error(404, "block not found")
            if len(parts) == 6:
                if parts[5] != "metadata":
                    return self._error(404, "not found")
                meta: dict[str, Any] = {
                    "blockId": "0x" + block_id.hex(),
                    "parents": parse_block(raw)["parents"],
                    "isSolid": True,
                }
                if ref is not None:
                    meta["referencedByMilestoneIndex"] = ref
                    meta["ledgerInclusionState"] = "noTransaction"
                else:
                    meta["shouldPromote"] = False
                    meta["shouldReattach"] = False
                return self._send(200, meta)
            if RAW in (self.headers.get("Accept") or ""):
                return self._send(200, bytes(node.oversize) if node.oversize else raw, RAW)
            return self._send(200, parse_block(raw))
        if parts[:5] == ["api", "core", "v2", "milestones", "by-index"] and len(parts) == 6:
            try:
                index = int(parts[5])
            except ValueError:
                return self._error(400, "bad index")
            with node.lock:
                ms = node.milestones[index - 1] if 1 <= index <= len(node.milestones) else None
            if ms is None or node.pruned:
                return self._error(404, "milestone not found")
            return self._send(200, {k: v for k, v in ms.items() if not k.startswith("_")})
        if path == "/admin/stats":
            with node.lock:
                return self._send(200, {"postContentTypes": node.post_types, "blocks": len(node.blocks),
                                        "held": list(node.held)})
        if parts[:2] == ["admin", "blocks"] and len(parts) == 4 and parts[3] == "raw-hash":
            block_id = self._block_id(parts[2])
            with node.lock:
                raw = node.blocks.get(block_id) if block_id else None
            if raw is None:
                return self._error(404, "block not found")
            return self._send(200, {"hash": "0x" + blake2b256(raw).hex(), "size": len(raw)})
        return self._error(404, "not found")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--milestone-interval", type=float, default=0.2)
    args = ap.parse_args()
    node = Node()
    Handler.node = node
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True

    def milestones() -> None:
        while True:
            time.sleep(args.milestone_interval)
            node.issue_milestone()

    threading.Thread(target=milestones, daemon=True).start()
    print(f"listening on {args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
