"""Phase 3: the files `serve` opens must be usable: TLS files load, the ledger's sqlite file and
the decision log can be written. Nothing here creates, writes or truncates anything.

Permission checks use `os.access`, so they answer for the user running the check (root passes
every permission bit; a read-only file system still fails).
"""

from __future__ import annotations

import errno
import os
import ssl
import stat
from pathlib import Path

from nexus_grpc.config._reader import Issues
from nexus_grpc.config.schema import Config, TlsConfig

SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_HEADER_BYTES = 100


def check(config: Config, issues: Issues) -> None:
    if config.server.tls is not None:
        _tls(config.server.tls, issues)
    if config.ledger.kind in ("sqlite", "redis"):  # redis keeps its outage journal there
        _ledger_file(config.ledger.path, issues)
    if config.telemetry.decision_log not in ("", "-"):
        _append_file(Path(config.telemetry.decision_log), "telemetry.decision_log", issues)


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    raise _EncryptedKey


def _tls(tls: TlsConfig, issues: Issues) -> None:
    """Each file is loaded as grpc will: the certificate chain, then the key with it, then the CA
    bundle; each problem names the file it is about."""
    cert_ok = _readable_file(tls.cert, "server.tls.cert", issues)
    key_ok = _readable_file(tls.key, "server.tls.key", issues)
    if cert_ok:
        problem = _load_certificates(tls.cert)
        if problem is not None:
            issues.add("server.tls.cert", f"{tls.cert}: {problem}")
            cert_ok = False
    if cert_ok and key_ok:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls.cert, tls.key, password=_no_password)
        except _EncryptedKey:
            issues.add("server.tls.key", f"{tls.key}: the private key is encrypted; give an unencrypted one")
        except (ssl.SSLError, OSError, ValueError) as exc:
            reason = _reason(exc)
            if "mismatch" in reason:
                problem = f"the private key does not match the certificate {tls.cert}"
            elif "pem lib" in reason:
                problem = "not a PEM private key"
            else:
                problem = f"cannot load the private key: {reason}"
            issues.add("server.tls.key", f"{tls.key}: {problem}")
    if tls.client_ca is not None and _readable_file(tls.client_ca, "server.tls.client_ca", issues):
        problem = _load_certificates(tls.client_ca)
        if problem is not None:
            issues.add("server.tls.client_ca", f"{tls.client_ca}: {problem}")


def _load_certificates(path: Path) -> str | None:
    """Parse the PEM certificates in `path`; the problem, or None when there is at least one."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = _reason(exc)
        if "no certificate" in reason:
            return "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)"
        return f"not a valid PEM certificate: {reason}"
    return None


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or exc).replace("_", " ").lower()
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    return str(exc)


def _stat(path: Path) -> os.stat_result | None:
    """The file's status, or None when there is no such file (or a parent is not a directory)."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError as exc:  # an embedded NUL: phase 2 refuses those, but never a traceback
        raise OSError(errno.EINVAL, f"invalid path ({exc})") from None


def _readable_file(path: Path, key_path: str, issues: Issues) -> bool:
    try:
        info = _stat(path)
    except OSError as exc:
        issues.add(key_path, f"{path}: {exc.strerror or exc}")
        return False
    if info is None:
        issues.add(key_path, f"file not found: {path}")
        return False
    if not stat.S_ISREG(info.st_mode):
        issues.add(key_path, f"{path} is not a regular file")
        return False
    if not os.access(path, os.R_OK):
        issues.add(key_path, f"{path} is not readable")
        return False
    return True


def _ledger_file(path: Path, issues: Issues) -> None:
    """The sqlite file: an existing one must be a writable sqlite database (or empty); a new one
    needs a directory that exists or can be created, and is writable (sqlite adds -wal files)."""
    key_path = "ledger.path"
    try:
        info = _stat(path)
        if info is None:
            _creatable_dir(path, key_path, issues, creates=True)
            return
        if stat.S_ISDIR(info.st_mode):
            issues.add(key_path, f"{path} is a directory; give the path of the ledger's sqlite file")
            return
        if not stat.S_ISREG(info.st_mode):
            issues.add(key_path, f"{path} is not a regular file")
            return
        with path.open("rb") as file:
            head = file.read(SQLITE_HEADER_BYTES)
        if head and head[: len(SQLITE_MAGIC)] != SQLITE_MAGIC:
            issues.add(key_path, f"{path} exists and is not a sqlite database; refusing to use it")
            return
        if head and not _sqlite_header_ok(head):
            issues.add(
                key_path, f"{path} is a corrupt sqlite database (its header is damaged); refusing to use it"
            )
            return
        if not os.access(path, os.R_OK | os.W_OK):
            issues.add(key_path, f"{path} is not writable")
        elif not os.access(path.parent, os.W_OK | os.X_OK):
            issues.add(
                key_path, f"directory {path.parent} is not writable (sqlite writes its -wal file there)"
            )
    except OSError as exc:
        issues.add(key_path, f"{path}: {exc.strerror or exc}")


def _sqlite_header_ok(head: bytes) -> bool:
    """The fields of the 100-byte database header sqlite itself checks on open ("file is not a
    database" otherwise): the page size, a power of two from 512 to 65536 (stored as 1), and the
    payload fractions 64/32/32."""
    if len(head) < SQLITE_HEADER_BYTES:
        return False
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    return 512 <= page_size <= 65536 and page_size & (page_size - 1) == 0 and head[21:24] == b"\x40\x20\x20"


def _append_file(path: Path, key_path: str, issues: Issues) -> None:
    """A file opened for appending: not a directory; writable if it exists, else its directory
    must exist (it is not created) and be writable."""
    try:
        info = _stat(path)
        if info is None:
            _creatable_dir(path, key_path, issues, creates=False)
        elif stat.S_ISDIR(info.st_mode):
            issues.add(key_path, f"{path} is a directory; give the path of a file")
        elif not os.access(path, os.W_OK):
            issues.add(key_path, f"{path} is not writable")
    except OSError as exc:
        issues.add(key_path, f"{path}: {exc.strerror or exc}")


def _creatable_dir(target: Path, key_path: str, issues: Issues, *, creates: bool) -> None:
    """The directory of `target` must be a writable directory; when `creates` (sqlite makes the
    missing directories) the nearest existing ancestor of a missing one must be."""
    directory = missing = target.parent
    while (info := _stat(missing)) is None:
        if not creates:
            issues.add(key_path, f"cannot create {target}: directory not found: {directory}")
            return
        if missing.parent == missing:
            break
        missing = missing.parent
    if info is None or not stat.S_ISDIR(info.st_mode):
        issues.add(key_path, f"cannot create {target}: {missing} is not a directory")
    elif not os.access(missing, os.W_OK | os.X_OK):
        issues.add(key_path, f"cannot create {target}: directory {missing} is not writable")
