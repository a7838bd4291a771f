"""The API's defences that need no running service: client addresses behind proxies, body caps per
route, metadata bounds, CSV formula escaping, and how uvicorn is started everywhere."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from api.auth import ApiKey
from api.export import csv_rows, text_cell
from api.limits import body_cap, media_type
from api.metadata import InvalidMetadata, MetadataLimits, MetadataTooLarge, attach, depth_of, parse_metadata
from api.netaddr import client_address, parse_networks
from api.settings import ApiSettings

ROOT = Path(__file__).resolve().parents[2]
LIMITS = MetadataLimits(per_image=16 * 1024, per_request=1024 * 1024, max_depth=16)


# -- client address ------------------------------------------------------------------------------
def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    assert client_address("198.51.100.7", ["1.2.3.4"], []) == "198.51.100.7"
    assert client_address("198.51.100.7", ["1.2.3.4"], parse_networks(["10.0.0.0/8"])) == "198.51.100.7"
    # Behind nothing at all, loopback is just another peer: no header is believed.
    assert client_address("127.0.0.1", ["1.2.3.4"], []) == "127.0.0.1"


def test_the_right_most_untrusted_hop_is_the_client() -> None:
    trusted = parse_networks(["10.0.0.0/8", "127.0.0.1"])
    # The client wrote "6.6.6.6" itself; the proxy at 10.1.1.1 appended its real peer 203.0.113.5.
    assert client_address("127.0.0.1", ["6.6.6.6, 203.0.113.5, 10.1.1.1"], trusted) == "203.0.113.5"
    assert client_address("127.0.0.1", ["6.6.6.6", "203.0.113.5"], trusted) == "203.0.113.5"  # two header lines
    assert client_address("127.0.0.1", [], trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", ["10.2.2.2, 10.1.1.1"], trusted) == "10.2.2.2"  # all trusted: left-most
    # Garbage where a trusted proxy should have written an address: the last address we can vouch for.
    assert client_address("127.0.0.1", ["203.0.113.5, unknown"], trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", ["203.0.113.5:4711"], trusted) == "203.0.113.5"
    assert client_address("127.0.0.1", ["[2001:db8::1]:443"], trusted) == "2001:db8::/64"  # IPv6: one /64
    assert client_address("127.0.0.1", ["2001:db8::2", "fe80::1%eth0"], trusted) == "fe80::/64"
    assert client_address("::ffff:127.0.0.1", ["203.0.113.9"], trusted) == "203.0.113.9"


def test_trusted_proxies_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ApiSettings().trusted_proxies == []
    monkeypatch.setenv("TRUSTED_PROXIES", '["10.0.0.0/8", "192.0.2.1"]')
    assert ApiSettings().trusted_proxies == ["10.0.0.0/8", "192.0.2.1"]
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1")
    assert ApiSettings().trusted_proxies == ["10.0.0.0/8", "192.0.2.1"]
    monkeypatch.setenv("TRUSTED_PROXIES", "not-an-ip")
    with pytest.raises(ValidationError):
        ApiSettings()


def test_uvicorn_never_rewrites_the_client_address() -> None:
    """uvicorn's default --proxy-headers believes X-Forwarded-For from 127.0.0.1 (and the image set it
    explicitly): every start of the API must switch that off."""
    dockerfile = (ROOT / "infra" / "api.Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert "--no-proxy-headers" in cmd and "--proxy-headers" not in cmd
    script = (ROOT / "infra" / "run-local.sh").read_text()
    (line,) = [ln for ln in script.splitlines() if " -m uvicorn api.main:app " in ln]
    assert "--no-proxy-headers" in shlex.split(line)
    assert '"--no-proxy-headers"' in (ROOT / "tests" / "integration" / "services.py").read_text()


# -- body caps -----------------------------------------------------------------------------------
CAPS = {"upload": 256 << 20, "lookup": 512 << 10, "json": 8 << 10}


@pytest.mark.parametrize(
    ("method", "path", "content_type", "cap"),
    [
        ("POST", "/v1/collections/c/images", "multipart/form-data; boundary=x", "upload"),
        ("POST", "/v1/collections/c/images", "Multipart/Form-Data; boundary=x", "upload"),
        ("POST", "/v1/collections/c/search", "multipart/form-data; boundary=x", "upload"),
        ("POST", "/v1/collections/c/search", "application/json", "json"),
        ("POST", "/v1/collections/c/images", "application/json", "json"),
        ("POST", "/v1/collections/c/clusters", "application/json", "json"),
        ("POST", "/v1/collections/c/clusters", "multipart/form-data; boundary=x", "json"),
        ("POST", "/v1/collections/c/clusters", None, "json"),
        ("POST", "/v1/collections/c/images/lookup", "application/json", "lookup"),
        ("POST", "/v1/collections/c/reembed", None, "json"),
        ("GET", "/v1/collections/c/images", "multipart/form-data; boundary=x", "json"),
    ],
)
def test_body_caps_by_route(method: str, path: str, content_type: str | None, cap: str) -> None:
    assert body_cap(method, path, content_type, CAPS) == CAPS[cap]


def test_media_types_compare_case_insensitively() -> None:
    assert media_type("Multipart/Form-Data; boundary=AbC") == "multipart/form-data"
    assert media_type(" APPLICATION/JSON ;charset=utf-8") == "application/json"
    assert media_type(None) == ""


def test_a_lookup_of_the_most_ids_fits_its_cap() -> None:
    body = json.dumps({"image_ids": ["0123456789abcdef" * 2] * 10_000}, indent=2)
    assert len(body.encode()) <= ApiSettings().max_lookup_body_bytes


# -- metadata ------------------------------------------------------------------------------------
def _nested(depth: int) -> str:
    return '{"a.jpg": ' + '{"x": ' * depth + "1" + "}" * depth + "}"


@pytest.mark.parametrize("depth", [17, 210, 5000, 100_000])
def test_deep_metadata_is_refused(depth: int) -> None:
    with pytest.raises(InvalidMetadata, match="deeper than 16"):
        parse_metadata(_nested(depth), LIMITS)


def test_deep_arrays_are_refused_without_recursion() -> None:
    with pytest.raises(InvalidMetadata):
        parse_metadata('{"a.jpg": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}", LIMITS)
    assert depth_of({"a": [[[{"b": 1}]]]}, 16) == 5


def test_metadata_at_the_depth_limit_is_kept() -> None:
    assert parse_metadata(_nested(15), LIMITS)["a.jpg"]["x"]["x"]


@pytest.mark.parametrize("number", ["1e999", "NaN", "-Infinity", "9" * 5000])
def test_numbers_json_cannot_carry_are_refused(number: str) -> None:
    with pytest.raises(InvalidMetadata):
        parse_metadata('{"a.jpg": {"n": ' + number + "}}", LIMITS)


def test_metadata_size_limits() -> None:
    with pytest.raises(MetadataTooLarge, match="per image"):
        parse_metadata(json.dumps({"a.jpg": {"v": "x" * 17_000}}), LIMITS)
    with pytest.raises(MetadataTooLarge):
        parse_metadata(json.dumps({f"{i}.jpg": {"v": "x"} for i in range(100_000)}), LIMITS)
    # One 15 KB entry is fine alone, but copied onto 100 files of that name it is 1.5 MB.
    meta = parse_metadata(json.dumps({"same.jpg": {"v": "x" * 15_000}}), LIMITS)
    assert attach([("same.jpg", "same.jpg")] * 60, meta, LIMITS.per_request)[0] == meta["same.jpg"]
    with pytest.raises(MetadataTooLarge, match="once per file"):
        attach([("same.jpg", "same.jpg")] * 100, meta, LIMITS.per_request)
    assert attach([("dir/b.jpg", "b.jpg"), ("c.jpg", "c.jpg")], {"b.jpg": {"k": 1}}, 100) == [{"k": 1}, None]


# -- CSV export ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["=HYPERLINK(1)", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_formula_like_text_is_quoted(name: str) -> None:
    assert text_cell(name) == "'" + name
    assert text_cell("plain.jpg") == "plain.jpg" and text_cell("") == ""


class _FakeStore:
    """The ApiStore reads the CSV export makes (one shard)."""

    def __init__(self, vectors: dict[str, bytes], records: dict[str, bytes]) -> None:
        self.vectors, self.records = vectors, records

    async def shard_count(self, collection: str) -> int:
        return 1

    async def scan_vectors(
        self, collection: str, shard: int, cursor: int, count: int
    ) -> tuple[int, dict[bytes, bytes]]:
        assert (collection, shard) == ("c", 0)
        return 0, {k.encode(): v for k, v in self.vectors.items()}

    async def filenames(self, collection: str, ids: list[str]) -> list[str]:
        return [json.loads(self.records[i])["filename"] for i in ids]


async def _collect(store: _FakeStore) -> str:
    return b"".join([chunk async for chunk in csv_rows(store, "c", 2)]).decode()  # type: ignore[arg-type]


def test_csv_escapes_file_names_but_not_numbers() -> None:
    record = {"image_id": "a" * 32, "filename": "=cmd|' /C calc'!A0", "format": "jpeg", "width": 1, "height": 1}
    record |= {"size": 1, "created_at": "2024-01-01T00:00:00Z"}
    store = _FakeStore(
        {"a" * 32: np.array([-0.01, 0.5], dtype="<f4").tobytes()}, {"a" * 32: json.dumps(record).encode()}
    )
    rows = list(csv.reader(io.StringIO(asyncio.run(_collect(store)))))
    assert rows[1][1] == "'=cmd|' /C calc'!A0"
    assert float(rows[1][2]) == pytest.approx(-0.01) and rows[1][2].startswith("-0.0")


# -- keys ----------------------------------------------------------------------------------------
def test_keys_take_an_optional_metrics_scope() -> None:
    key = ApiKey(name="ops", sha256="a" * 64, scopes=["metrics"])
    assert key.scopes == ["metrics"] and ApiKey(name="x", sha256="a" * 64).scopes == []
    with pytest.raises(ValidationError):
        ApiKey(name="x", sha256="a" * 64, scopes=["admin"])


def test_a_lone_surrogate_in_metadata_is_422_not_500() -> None:
    for raw in ('{"a.jpg": {"x": "\\ud800"}}', '{"a.jpg": {"\\udfff": 1}}'):
        with pytest.raises(InvalidMetadata, match="Unicode"):
            metadata = parse_metadata(raw, LIMITS)
            attach(metadata, ["a.jpg"], LIMITS)
