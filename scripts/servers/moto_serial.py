"""moto_server for DynamoDB, with requests applied one at a time, and an optional request meter.

moto's DynamoDB backend has no locking, and moto_server answers each connection on its own
thread: two conditional writes racing on one item can both pass their condition (a lost update
that real DynamoDB never allows; found by the LeaseTable contract case
concurrent_writes_never_lose_an_update). This launcher runs the same WSGI application as
moto_server behind a lock, so every request is applied atomically, as DynamoDB applies each
single-item write. Connections are still accepted concurrently.

With KCL_MOTO_METER=1 it also meters every DynamoDB request it answers, by table and kind, in
on-demand request units computed from the real item sizes by DynamoDB's rules (moto reports a
fixed number of units per request kind). The counts are served as JSON:

    GET  /_kcl/meter          {"TABLE OPERATION KIND": {"requests", "read_units", "write_units",
                               "items", "bytes"}, ...}
    POST /_kcl/meter/reset    sets everything to zero

Kinds: Scan and Query are "strong" or "eventual"; UpdateItem on a Kinesin heartbeat row is
"heartbeat" (it moves leaseCounter) or "poke" (it does not), on a lease "checkpoint" (it sets
checkpoint) or "lease"; a refused conditional write is "refused" (billed too).

Usage: python moto_serial.py HOST PORT
"""

import base64
import io
import json
import math
import os
import sys
import threading
from collections import defaultdict

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

WORKER_KEY_PREFIX = "kcl-rs/worker/"


def number_size(text):
    """Bytes DynamoDB bills for a number: one per two significant digits, plus one."""
    digits = "".join(c for c in text if c.isdigit())
    significant = max(len(digits.strip("0")), 1)
    return math.ceil(significant / 2) + 1 + (1 if text.startswith("-") else 0)


def value_size(value):
    """Bytes DynamoDB bills for one attribute value (the same rules as kcl_lease_dynamo)."""
    (kind, inner), = value.items()
    if kind == "S":
        return len(inner.encode())
    if kind == "N":
        return number_size(inner)
    if kind == "B":
        return len(base64.b64decode(inner))
    if kind == "SS":
        return sum(len(s.encode()) for s in inner)
    if kind == "NS":
        return sum(number_size(n) for n in inner)
    if kind == "BS":
        return sum(len(base64.b64decode(b)) for b in inner)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + value_size(v) + 1 for k, v in inner.items())
    if kind == "L":
        return 3 + sum(value_size(v) + 1 for v in inner)
    return 0


def item_size(item):
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


class Meter:
    """Request units by table, operation and kind."""

    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.data = defaultdict(
            lambda: {"requests": 0, "read_units": 0.0, "write_units": 0.0, "items": 0, "bytes": 0}
        )

    def add(self, key, read_units=0.0, write_units=0.0, items=0, size=0):
        with self.lock:
            entry = self.data[key]
            entry["requests"] += 1
            entry["read_units"] += read_units
            entry["write_units"] += write_units
            entry["items"] += items
            entry["bytes"] += size

    def record(self, target, request_body, response_body, status):
        if not target or not target.startswith("DynamoDB_20120810."):
            return
        op = target.split(".", 1)[1]
        try:
            request = json.loads(request_body or b"{}")
            response = json.loads(response_body or b"{}")
        except ValueError:
            return
        table = request.get("TableName", "?")
        ok = status.startswith("2")
        if op in ("Scan", "Query"):
            items = response.get("Items", []) if ok else []
            size = sum(item_size(i) for i in items)
            eventual = not request.get("ConsistentRead", False) or "IndexName" in request
            units = max(math.ceil(size / 4096), 1) * (0.5 if eventual else 1.0)
            kind = "eventual" if eventual else "strong"
            self.add(f"{table} {op} {kind}", read_units=units, items=len(items), size=size)
        elif op == "GetItem":
            item = response.get("Item") if ok else None
            size = item_size(item) if item else 0
            eventual = not request.get("ConsistentRead", False)
            units = max(math.ceil(size / 4096), 1) * (0.5 if eventual else 1.0)
            self.add(f"{table} GetItem", read_units=units, items=1 if item else 0, size=size)
        elif op in ("PutItem", "UpdateItem", "DeleteItem"):
            key = request.get("Key", request.get("Item", {})).get("leaseKey", {}).get("S", "")
            if op == "PutItem":
                size = item_size(request.get("Item", {}))
            else:
                # The item as written (ALL_NEW), or as it was (a refused condition, ALL_OLD).
                returned = response.get("Attributes") or response.get("Item") or {}
                size = item_size(returned)
            if not ok:
                kind = "refused"
            elif op != "UpdateItem":
                kind = "heartbeat row" if key.startswith(WORKER_KEY_PREFIX) else "lease"
            elif key.startswith(WORKER_KEY_PREFIX):
                names = request.get("ExpressionAttributeNames", {}).values()
                kind = "heartbeat" if "leaseCounter" in names else "poke"
            else:
                names = request.get("ExpressionAttributeNames", {}).values()
                kind = "checkpoint" if "checkpoint" in names else "lease"
            self.add(f"{table} {op} {kind}", write_units=max(math.ceil(size / 1024), 1), size=size)
        else:
            self.add(f"{table} {op}")

    def snapshot(self):
        with self.lock:
            return json.dumps(self.data, sort_keys=True).encode()


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()
    meter = Meter() if os.environ.get("KCL_MOTO_METER") == "1" else None

    def serialized(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if meter is not None and path.startswith("/_kcl/meter"):
            if environ.get("REQUEST_METHOD") == "POST" and path.endswith("/reset"):
                with meter.lock:
                    meter.reset()
            body = meter.snapshot()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        with lock:
            request_body = b""
            if meter is not None:
                length = int(environ.get("CONTENT_LENGTH") or 0)
                request_body = environ["wsgi.input"].read(length)
                environ["wsgi.input"] = io.BytesIO(request_body)
            statuses = []

            def recording_start_response(status, headers, exc_info=None):
                statuses.append(status)
                return start_response(status, headers, exc_info)

            # Consume the whole response inside the lock: the request is applied before the
            # next one starts.
            response = list(app(environ, recording_start_response))
            if meter is not None:
                meter.record(environ.get("HTTP_X_AMZ_TARGET"), request_body, b"".join(response),
                             statuses[0] if statuses else "500")
            return response

    run_simple(
        host,
        port,
        serialized,
        threaded=True,
        use_reloader=False,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
