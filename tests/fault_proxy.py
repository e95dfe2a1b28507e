"""A fault-injecting HTTP proxy in front of a loopback S3 (moto): each request, with probability
``p``, gets one fault drawn from ``kinds``:

- ``503``: ``503 SlowDown`` (S3's throttling answer), the request never reaching the store;
- ``500``: ``500 InternalError``;
- ``reset-put``: a PUT's connection closed after half its body was read (the object is not written);
- ``reset-get``: a GET's answer cut off after half its body (headers promise the whole);
- ``latency``: the request delayed by ``latency`` seconds, then served.

``fail_after(n)`` makes every request after the next ``n`` a 503 (the retries run out); ``heal()``
ends that. Counts of requests and faults are kept for the figures. Used by tests/test_s3_faults.py
and bench/s3_faults.py.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KINDS = ("503", "500", "reset-put", "reset-get", "latency")
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}
_ERRORS = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
}


class FaultProxy:
    def __init__(self, upstream: str, p: float = 0.0, kinds=KINDS, seed: int = 0, latency=0.2):
        """``p``: each request's chance of a fault (``heal(p, put_p)`` changes it; ``put_p``: a
        PUT's, where the writes must surely meet some)."""
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port)
        self.p, self.kinds, self.latency = p, tuple(kinds), latency
        self.put_p: float | None = None
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.faults: Counter = Counter()
        self._fail_after: int | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ the schedule
    def fail_after(self, n: int) -> None:
        with self._lock:
            self._fail_after = self.requests + n

    def heal(self, p: float = 0.0, put_p: float | None = None) -> None:
        with self._lock:
            self._fail_after, self.p, self.put_p = None, p, put_p

    def _draw(self, method: str) -> str | None:
        with self._lock:
            self.requests += 1
            if self._fail_after is not None and self.requests > self._fail_after:
                kind = "503"
            elif self._rng.random() < (
                self.put_p if method == "PUT" and self.put_p is not None else self.p
            ):
                # the faults a request of this method can meet (a reset needs a body)
                fits = [
                    k
                    for k in self.kinds
                    if (k != "reset-put" or method == "PUT")
                    and (k != "reset-get" or method == "GET")
                ]
                unseen = [k for k in fits if not self.faults[k]]  # every kind early, then any
                kind = self._rng.choice(unseen or fits)
            else:
                return None
            self.faults[kind] += 1
            return kind

    # ------------------------------------------------------------------ one request
    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        n = int(h.headers.get("Content-Length") or 0)
        kind = self._draw(h.command)
        if kind == "reset-put" and n > 1:
            h.rfile.read(n // 2)
            _reset(h)
            return
        body = h.rfile.read(n) if n else b""
        if kind in _ERRORS:
            status, code, message = _ERRORS[kind]
            xml = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>{message}</Message></Error>"
            ).encode()
            h.send_response(status)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(xml)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(xml)
            return
        if kind == "latency":
            time.sleep(self.latency)
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP}
            conn.request(h.command, h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        h.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                h.send_header(k, v)
        length = int(resp.getheader("Content-Length") or len(data))
        h.send_header("Content-Length", str(length if h.command == "HEAD" else len(data)))
        h.end_headers()
        if h.command == "HEAD":
            return
        if kind == "reset-get" and len(data) > 1:
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            _reset(h)
            return
        h.wfile.write(data)


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Close the connection at once (RST, not a clean FIN), as a dropped connection does."""
    h.close_connection = True
    try:
        h.connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        h.connection.close()
    except OSError:
        pass
