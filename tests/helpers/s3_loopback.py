"""A real S3-protocol server on loopback (moto's), optionally behind a proxy that injects faults.

Used by the object-storage tests and ``benchmarks/object_store.py``::

    with LoopbackS3(fault_rate=0.1, seed=0) as s3:
        s3.create_bucket("runs")
        env = s3.env()  # AWS_ENDPOINT_URL (the proxy), credentials, region, retry settings

:class:`FaultProxy` forwards each HTTP request to the server and, for a seeded fraction of them,
does what a flaky object store or network does: answers ``503 SlowDown`` without forwarding,
forwards the request and then drops the connection before answering (the write happened; the
client does not know), drops the connection before forwarding, or delays the answer. The proxy
counts what it injected.
"""

from __future__ import annotations

import http.client
import logging
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: Injected faults, in the order their share of ``fault_rate`` is drawn.
FAULTS = ("slowdown_503", "drop_after_forward", "drop_before_forward", "delay")

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy(ThreadingHTTPServer):
    """HTTP proxy on 127.0.0.1 in front of ``upstream`` (``host:port``) that injects faults into
    ``fault_rate`` of the requests (each fault kind equally often), seeded."""

    daemon_threads = True

    def __init__(self, upstream: tuple[str, int], fault_rate: float = 0.0, seed: int = 0, delay_s: float = 0.2):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream, self.fault_rate, self.delay_s = upstream, fault_rate, delay_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter = Counter()

    def draw(self) -> str | None:
        """The fault to inject into the next request, or None."""
        with self.lock:
            self.counts["requests"] += 1
            if self.rng.random() >= self.fault_rate:
                return None
            fault = FAULTS[self.rng.randrange(len(FAULTS))]
            self.counts[fault] += 1
            return fault


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, *args) -> None:  # quiet
        pass

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        fault = self.server.draw()
        if fault == "slowdown_503":
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOWDOWN)))
            self.end_headers()
            self.wfile.write(SLOWDOWN)
            return
        if fault == "drop_before_forward":
            self._drop()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "proxy-connection")}
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            status, resp_headers = resp.status, resp.getheaders()
        finally:
            conn.close()
        if fault == "drop_after_forward":
            self._drop()
            return
        if fault == "delay":
            time.sleep(self.server.delay_s)
        self.send_response(status)
        skip = ("connection", "transfer-encoding", "date", "server") + (() if self.command == "HEAD" else ("content-length",))
        for k, v in resp_headers:
            if k.lower() not in skip:
                self.send_header(k, v)
        if self.command != "HEAD":  # a HEAD answer keeps the object's Content-Length
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _drop(self) -> None:
        """Close the connection without an answer (the client sees a reset / disconnect)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _proxy


class LoopbackS3:
    """moto's S3 server on loopback, behind a :class:`FaultProxy` (``fault_rate`` 0: no faults)."""

    def __init__(self, fault_rate: float = 0.0, seed: int = 0):
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        self.fault_rate, self.seed = fault_rate, seed
        self.proxy: FaultProxy | None = None

    def __enter__(self) -> "LoopbackS3":
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request at INFO
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.direct = f"http://{host}:{port}"
        self.proxy = FaultProxy((host, port), self.fault_rate, self.seed)
        threading.Thread(target=self.proxy.serve_forever, daemon=True, name="s3-fault-proxy").start()
        self.endpoint = f"http://127.0.0.1:{self.proxy.server_address[1]}"
        return self

    def __exit__(self, *exc) -> None:
        if self.proxy is not None:
            self.proxy.shutdown()
            self.proxy.server_close()
        self.server.stop()

    def set_fault_rate(self, rate: float) -> None:
        assert self.proxy is not None
        self.proxy.fault_rate = rate

    @property
    def counts(self) -> Counter:
        assert self.proxy is not None
        return self.proxy.counts

    def env(self) -> dict[str, str]:
        """What a user sets to point s3fs at this store (through the proxy). ``standard`` retries
        with 10 attempts: what one configures for a store that throttles."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "matchmill", "AWS_SECRET_ACCESS_KEY": "secret",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "10"}

    def create_bucket(self, name: str) -> None:
        """Create a bucket directly on the server (not through the proxy)."""
        import boto3

        boto3.client("s3", endpoint_url=self.direct, aws_access_key_id="matchmill", aws_secret_access_key="secret",
                     region_name="us-east-1").create_bucket(Bucket=name)
