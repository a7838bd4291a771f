"""The guarded fetcher against a real loopback HTTP server (no service needed)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

import shared.fetch as fetch
from shared.fetch import Fetcher, FetchPolicy
from shared.urlcheck import FetchError, is_public


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            hits.append(self.path)
            if self.path == "/to-metadata":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()
                return
            if self.path == "/loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.end_headers()
                return
            body = b"x" * (5000 if self.path == "/big" else 10)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    srv.shutdown()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "ff02::1",
        "240.0.0.1",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses(address: str) -> None:
    assert is_public(address)


def test_loopback_is_refused_before_any_connection(server: tuple[str, list[str]]) -> None:
    base, hits = server
    hits.clear()
    with pytest.raises(FetchError) as caught:
        Fetcher(FetchPolicy()).get(f"{base}/a.jpg")
    assert caught.value.code == "blocked_address"
    assert hits == []


def test_a_redirect_to_a_private_address_is_refused(server: tuple[str, list[str]], monkeypatch) -> None:
    # Treat this loopback server as "public": the first hop is allowed, the redirect's is not.
    base, hits = server
    real = fetch.is_public
    monkeypatch.setattr(fetch, "is_public", lambda a: a == "127.0.0.1" or real(a))
    with pytest.raises(FetchError) as caught:
        Fetcher(FetchPolicy()).get(f"{base}/to-metadata")
    assert caught.value.code == "blocked_address"
    assert "169.254.169.254" in caught.value.detail
    assert hits[-1] == "/to-metadata"


def test_limits(server: tuple[str, list[str]]) -> None:
    base, _ = server
    fetcher = Fetcher(FetchPolicy(allow_private=True, max_bytes=1000))
    assert fetcher.get(f"{base}/small") == b"x" * 10
    for path, code in (("/big", "too_large"), ("/loop", "fetch_failed")):
        with pytest.raises(FetchError) as caught:
            fetcher.get(base + path)
        assert caught.value.code == code
    with pytest.raises(FetchError) as caught:
        fetcher.get("file:///etc/passwd")
    assert caught.value.code == "invalid_url"
    with pytest.raises(FetchError) as caught:
        fetcher.get("http://user:pw@example.com/")
    assert caught.value.code == "invalid_url"


def test_an_unencodable_host_is_an_invalid_url() -> None:
    with pytest.raises(FetchError) as caught:
        Fetcher(FetchPolicy()).get("http://xn--/")
    assert caught.value.code == "invalid_url"


@pytest.fixture
def trickle() -> Iterator[str]:
    """A server that sends its response headers one byte every 0.3 s (for GET and POST alike)."""
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Slow: " + b"a" * 1000:
                if stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(0.3)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


def test_trickled_headers_end_at_the_total_timeout(trickle: str) -> None:
    """Each byte arrives well within the read timeout; the whole fetch must still end at the total."""
    import time

    fetcher = Fetcher(FetchPolicy(allow_private=True, read_timeout_s=5, total_timeout_s=1.5))
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        fetcher.get(f"{trickle}/slow.jpg")
    assert caught.value.code == "timeout" and time.monotonic() - started < 3
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:  # a webhook delivery: the same limit
        fetcher.post_json(f"{trickle}/hook", b"{}", {})
    assert caught.value.code == "timeout" and time.monotonic() - started < 3


def test_a_pooled_connection_serves_the_next_fetch_with_its_own_deadline(server: tuple[str, list[str]]) -> None:
    import time

    base, _ = server
    fetcher = Fetcher(FetchPolicy(allow_private=True, total_timeout_s=0.5))
    for _ in range(3):  # kept-alive connection, a fresh deadline each time
        assert fetcher.get(f"{base}/small") == b"x" * 10
        time.sleep(0.3)


@pytest.mark.parametrize("address", ["fec0::1", "feff:ffff::1"])
def test_site_local_ipv6_is_not_public(address: str) -> None:
    assert not is_public(address)
