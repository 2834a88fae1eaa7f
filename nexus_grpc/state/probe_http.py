"""The health probes' HTTP client: one HTTP/1.1 GET on asyncio streams (https through the default
SSL context), `Connection: close`, bounded in what it reads. No thread, no extra dependency; the
caller bounds it with a timeout."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from nexus_grpc import __version__

MAX_BODY_BYTES = 1 << 20  # a longer body is not read (the status still counts)
MAX_HEADER_LINES = 100


class ProbeError(Exception):
    """The probe got no usable HTTP answer."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    body: bytes | None  # None: not read (not a 200) or longer than MAX_BODY_BYTES


async def http_get(
    url: str,
    headers: list[tuple[str, str]],
    ssl_context: Callable[[], ssl.SSLContext],
    *,
    max_body: int = MAX_BODY_BYTES,
) -> HttpAnswer:
    """One HTTP/1.1 GET (`Connection: close`); the caller bounds it with a timeout."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ProbeError(f"not an http(s) URL: {url!r}")
    secure = scheme == "https"
    port = parts.port or (443 if secure else 80)
    reader, writer = await asyncio.open_connection(
        parts.hostname,
        port,
        ssl=ssl_context() if secure else None,
        server_hostname=parts.hostname if secure else None,
    )
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {parts.netloc.rpartition('@')[2]}",
            f"User-Agent: nexus-grpc-health/{__version__}",
            "Accept: application/json",
            "Connection: close",
            *(f"{name}: {value}" for name, value in headers),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace"))
        await writer.drain()
        status = _status_line(await reader.readline())
        fields = await _header_fields(reader)
        if status != 200:
            return HttpAnswer(status, None)
        return HttpAnswer(status, await _body(reader, fields, max_body))
    finally:
        writer.close()


def _status_line(line: bytes) -> int:
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ProbeError("not an HTTP answer" if line else "connection closed without an answer")
    return int(parts[1])


async def _header_fields(reader: asyncio.StreamReader) -> dict[str, str]:
    fields: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return fields
        name, _, value = line.decode("latin-1").partition(":")
        fields[name.strip().lower()] = value.strip()
    raise ProbeError("too many header lines")


async def _body(reader: asyncio.StreamReader, fields: dict[str, str], max_body: int) -> bytes | None:
    if "chunked" in fields.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        size = 0
        while True:
            head = (await reader.readline()).split(b";", 1)[0].strip()
            try:
                n = int(head, 16)
            except ValueError:
                raise ProbeError("malformed chunked body") from None
            if n == 0:
                return b"".join(chunks)
            size += n
            if size > max_body:
                return None
            chunks.append(await reader.readexactly(n))
            await reader.readline()  # the CRLF after the chunk
    length = fields.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ProbeError("malformed Content-Length")
        if int(length) > max_body:
            return None
        return await reader.readexactly(int(length))
    data = await reader.read(max_body + 1)
    while data and len(data) <= max_body:
        more = await reader.read(max_body + 1 - len(data))
        if not more:
            break
        data += more
    return data if len(data) <= max_body else None
