"""`nexus-grpc dev-cert DIR`: a self-signed certificate and key for trying TLS in development
(`[server.tls]`, and the gateway's trust for it). Made by the `openssl` command line tool; never
for production, and never written without being asked."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nexus_grpc.errors import NexusError

CERT_NAME = "nexus-grpc.crt"
KEY_NAME = "nexus-grpc.key"
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


class DevCertError(NexusError):
    """The certificate could not be written (openssl missing or failing, files in the way)."""


@dataclass(frozen=True, slots=True)
class DevCert:
    cert: Path
    key: Path
    names: tuple[str, ...]
    days: int


def _san(names: Sequence[str]) -> str:
    entries = []
    for name in names:
        try:
            entries.append(f"IP:{ipaddress.ip_address(name)}")
        except ValueError:
            entries.append(f"DNS:{name}")
    return ",".join(entries)


def write_dev_cert(
    directory: Path, names: Sequence[str] = DEFAULT_NAMES, *, days: int = 30, force: bool = False
) -> DevCert:
    """Write DIR/nexus-grpc.crt (self-signed, valid for `names` as DNS names or IP addresses,
    usable as its own trust anchor) and DIR/nexus-grpc.key (P-256, readable by the owner only)."""
    if not names:
        raise DevCertError("at least one host name or IP address is needed")
    if not 1 <= days <= 3650:
        raise DevCertError(f"--days {days} is out of range 1..3650")
    for name in names:
        if not name or any(c.isspace() or c in ",/=" for c in name):
            raise DevCertError(f"{name!r} is not a host name or an IP address")
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DevCertError(
            "the openssl command was not found on PATH: install it (Debian: apt-get install openssl), "
            "or make a certificate and key yourself and name them in [server.tls]"
        )
    cert, key = directory / CERT_NAME, directory / KEY_NAME
    present = [str(p) for p in (cert, key) if p.exists()]
    if present and not force:
        raise DevCertError(f"{' and '.join(present)} already exist: pass --force to replace them")
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(days),
        "-subj", f"/CN={names[0]}/O=nexus-grpc development",
        "-addext", f"subjectAltName={_san(names)}",
        "-addext", "extendedKeyUsage=serverAuth",
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DevCertError(f"running openssl failed: {exc}") from None
    if done.returncode != 0:
        raise DevCertError(f"openssl failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    os.chmod(key, 0o600)
    return DevCert(cert, key, tuple(names), days)
