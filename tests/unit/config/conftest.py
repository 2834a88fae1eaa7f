"""A directory of files the config tests point at: TLS material made by openssl (good, mismatched,
encrypted, garbage) and file-system shapes for the ledger and decision-log checks.

Tests run as root, and root passes every permission bit, so "not writable" is tested with shapes
no user can write through: a regular file where a directory is needed, a directory where a file
is needed, a file that is not a sqlite database.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key_and_cert(name: str, cwd: Path) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=cwd)  # fmt: skip


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert shutil.which("openssl"), "openssl is needed to make test certificates"
    d = tmp_path_factory.mktemp("config-files")
    _key_and_cert("server", d)  # server.pem + server.key: a matching pair (and a CA bundle)
    _key_and_cert("other", d)  # other.key does not match server.pem
    _openssl("ec", "-in", "server.key", "-aes256", "-passout", "pass:secret", "-out", "encrypted.key", cwd=d)
    (d / "garbage.pem").write_text("this is not a certificate\n")
    (d / "empty.pem").write_bytes(b"")
    (d / "adir").mkdir()
    (d / "afile").write_text("a regular file\n")
    (d / "notsqlite.db").write_bytes(b"PK\x03\x04 a zip file, not sqlite")
    (d / "empty.db").write_bytes(b"")
    sqlite3.connect(d / "ledger.db").execute("CREATE TABLE t (x)").connection.close()
    return d
