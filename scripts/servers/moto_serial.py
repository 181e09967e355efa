"""moto_server for DynamoDB, with requests applied one at a time.

moto's DynamoDB backend has no locking, and moto_server answers each connection on its own
thread: two conditional writes racing on one item can both pass their condition (a lost update
that real DynamoDB never allows; found by the LeaseTable contract case
concurrent_writes_never_lose_an_update). This launcher runs the same WSGI application as
moto_server behind a lock, so every request is applied atomically, as DynamoDB applies each
single-item write. Connections are still accepted concurrently.

Usage: python moto_serial.py HOST PORT
"""

import sys
import threading

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialized(environ, start_response):
        with lock:
            # Consume the whole response inside the lock: the request is applied before the
            # next one starts.
            return list(app(environ, start_response))

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
