"""A tiny HTTP server that turns requests into handler events, as a platform's front door would.

    python -m apps.http_adapter --style lambda|workers --host 127.0.0.1 --port 8080 [--migrate]

JSON in and out; one log line per request (method, path, status, time; never headers,
bodies or URLs with credentials). SIGTERM stops accepting, lets in-flight requests finish,
closes the app's connection and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, ModuleType
from typing import Any
from urllib.parse import urlsplit

from apps import db

STYLES = ("lambda", "workers")
MAX_BODY_BYTES = 64 * 1024
READ_TIMEOUT_S = 10
SHUTDOWN_POLL_S = 0.1  # how soon serve_forever() notices a shutdown request

log = logging.getLogger("apps.http")


class AppServer(ThreadingHTTPServer):
    """Threaded server; closing it waits for in-flight requests."""

    daemon_threads = False
    block_on_close = True
    request_queue_size = 128  # socketserver's default listen backlog of 5 resets request bursts

    def __init__(self, address: tuple[str, int], app: ModuleType) -> None:
        super().__init__(address, RequestHandler)
        self.app = app


class RequestHandler(BaseHTTPRequestHandler):
    """Maps one HTTP request to one handler event."""

    server: AppServer
    timeout = READ_TIMEOUT_S
    server_version = "poolkit-app"
    sys_version = ""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        started = time.monotonic()
        path = urlsplit(self.path).path
        status, body = self._respond(path)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        log.info("%s %s %d %.1fms", self.command, path, status,
                 (time.monotonic() - started) * 1000)

    def _respond(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return 400, {"error": "bad Content-Length"}
        if length > MAX_BODY_BYTES:
            return 413, {"error": f"body over {MAX_BODY_BYTES} bytes"}
        try:
            body = self.rfile.read(length).decode("utf-8") if length > 0 else None
        except UnicodeDecodeError:
            return 400, {"error": "body must be UTF-8 JSON"}
        event = {"method": self.command, "path": path, "body": body}
        try:
            response = self.server.app.handler(event, None)
        except Exception as exc:  # the app's own bug: answer, log the class only
            log.error("%s %s: unhandled %s", self.command, path, type(exc).__name__)
            return 500, {"error": "internal error"}
        return int(response["status"]), response["body"]

    def log_message(self, format: str, *args: Any) -> None:
        """http.server's own messages (bad request lines, timeouts), redacted."""
        log.warning("%s", db.redact(format % args))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Replaced by the line :meth:`_dispatch` writes."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m apps.http_adapter", description=__doc__)
    parser.add_argument("--style", choices=STYLES, required=True, help="which app pattern")
    parser.add_argument("--host", default="127.0.0.1", help="listen address")
    parser.add_argument("--port", type=int, default=8080, help="listen port")
    parser.add_argument(
        "--migrate",
        action="store_true",
        default=os.environ.get("APP_MIGRATE") == "1",
        help="create the schema once at startup, over DIRECT_URL when set (env APP_MIGRATE=1)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = db.load_settings()
        if args.migrate:
            db.ensure_schema(settings)
            log.info("schema ready (over %s)", "DIRECT_URL" if settings.direct_url else
                     "POOLED_DATABASE_URL")
    except Exception as exc:
        return db.startup_exit_code(exc, log)

    app = importlib.import_module(f"apps.{args.style}_style")
    server = AppServer((args.host, args.port), app)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s: shutting down", signal.Signals(signum).name)
        # shutdown() waits for serve_forever() to return, which runs in this very thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving the %s style on %s:%d (connection limit %d, prepared statements %s)",
             args.style, args.host, server.server_port, settings.connection_limit,
             "on" if settings.prepared_statements else "off")
    try:
        server.serve_forever(poll_interval=SHUTDOWN_POLL_S)
    finally:
        server.server_close()
        app.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
