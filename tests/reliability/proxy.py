"""A TCP proxy on 127.0.0.1 that breaks one connection at a chosen point of the protocol.

Armed with a byte pattern (a query text such as ``b"COMMIT"``), it watches what clients send:

- ``answer=False``: the message holding the pattern is never forwarded and the client's
  connection is closed (the break happened *before* the server saw it);
- ``answer=True``: the message is forwarded, the server's answer is swallowed, then the
  client's connection is closed (the server acted; the acknowledgement was lost).

It fires once, then forwards everything untouched. Real bytes between a real client and a real
PgBouncer: only the moment of the break is chosen.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

ANSWER_WAIT_S = 5.0


@dataclass
class Trap:
    pattern: bytes
    answer: bool
    fired: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Link:
    client: socket.socket
    server: socket.socket
    swallowing: Trap | None = None

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class BreakingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._trap: Trap | None = None
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, pattern: bytes, answer: bool) -> Trap:
        """Break the next connection that sends ``pattern`` (once)."""
        trap = Trap(pattern, answer)
        with self._lock:
            self._trap = trap
        return trap

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        for link in self._links:
            link.close()

    def __enter__(self) -> BreakingProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                return
            server.settimeout(None)
            link = _Link(client, server)
            self._links.append(link)
            threading.Thread(target=self._upstream, args=(link,), daemon=True).start()
            threading.Thread(target=self._downstream, args=(link,), daemon=True).start()

    def _take_trap(self, chunk: bytes) -> Trap | None:
        with self._lock:
            trap = self._trap
            if trap is None or trap.pattern not in chunk:
                return None
            self._trap = None
            return trap

    def _upstream(self, link: _Link) -> None:
        while chunk := _recv(link.client):
            trap = self._take_trap(chunk)
            if trap is None:
                if not _send(link.server, chunk):
                    break
                continue
            if trap.answer:
                link.swallowing = trap
                _send(link.server, chunk)
                trap.answered.wait(ANSWER_WAIT_S)
            trap.fired.set()
            break
        link.close()

    def _downstream(self, link: _Link) -> None:
        while chunk := _recv(link.server):
            if link.swallowing is not None:
                link.swallowing.answered.set()
                continue
            if not _send(link.client, chunk):
                break
        link.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True
