"""`nexus-grpc check-config`: a clean message and exit code for every file, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nexus_grpc.cli import main

GPU = '[[backends]]\nid = "gpu"\nurl = "http://127.0.0.1:11434"\ntype = "ollama"\n'


def check(path: Path | str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check-config", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "missing.toml"


def _directory(tmp_path: Path) -> Path:
    return tmp_path


def _below_a_file(tmp_path: Path) -> Path:
    (tmp_path / "afile").write_text("x")
    return tmp_path / "afile" / "nexus.toml"


def _binary(tmp_path: Path) -> Path:
    path = tmp_path / "nexus.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    return path


def _nul_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "nexus.toml"
    path.write_bytes(b"[server]\x00\x01\x02")
    return path


def _deep_nesting(tmp_path: Path) -> Path:
    path = tmp_path / "nexus.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000)
    return path


def _huge_integer(tmp_path: Path) -> Path:
    path = tmp_path / "nexus.toml"
    path.write_text("[server]\nworkers = " + "9" * 5000)
    return path


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "nexus.toml"
    os.mkfifo(path)  # reading it would block until a writer came
    return path


def _device(tmp_path: Path) -> Path:
    return Path("/dev/zero")  # reading it would never end


def _too_large(tmp_path: Path) -> Path:
    path = tmp_path / "nexus.toml"
    with path.open("wb") as file:
        file.truncate(64 * 1024 * 1024 + 1)  # sparse: takes no space
    return path


BAD_FILES = {
    "missing": (_missing, "cannot read"),
    "a directory": (_directory, "cannot read: a directory"),
    "a FIFO": (_fifo, "cannot read: not a regular file"),
    "a device": (_device, "cannot read: not a regular file"),
    "larger than 64 MiB": (_too_large, "at most 67108864 allowed"),
    "below a regular file": (_below_a_file, "cannot read"),
    "binary": (_binary, "not UTF-8"),
    "NUL bytes": (_nul_bytes, "TOML syntax error"),
    "nested too deeply": (_deep_nesting, "nested too deeply"),
    "integer of 5000 digits": (_huge_integer, "integer"),
}


@pytest.mark.parametrize(("make", "words"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_file_that_cannot_be_loaded_is_a_clean_error(
    make: object, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert callable(make)
    path = make(tmp_path)
    code, out, err = check(path, capsys)
    assert code == 1
    assert out == ""
    first, summary = err.splitlines()
    assert first.startswith(f"error: {path}: ")
    assert words in first
    assert summary == f"{path}: 1 error; the server would refuse to start"


def test_a_bad_file_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text('[server]\nlisten = "[::1"\ndrain_seconds = 1e300\n[queue]\nmax_wait = 5\n')
    code, _, err = check(path, capsys)
    assert code == 1
    assert err.splitlines() == [
        f"error: {path}: server.listen: '[::1' has an unbalanced '[' or ']'",
        f"error: {path}: server.drain_seconds: 1e+300 is out of range (must be 0..3600)",
        f"error: {path}: queue.max_wait: unknown key; did you mean 'max_wait_ms'?",
        f"{path}: 3 errors; the server would refuse to start",
    ]


def test_a_good_file_prints_its_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nexus.toml"
    path.write_text('[ledger]\nkind = "memory"\n')
    code, out, err = check(path, capsys)
    assert (code, err) == (0, "")
    warning, summary = out.splitlines()
    assert warning == f"warning: {path}: backends: no backends: every request will be rejected"
    assert summary.startswith(f"{path}: OK (version ")
    assert summary.endswith(", 0 backends, 0 policies, 1 warning)")
    path.write_text(GPU)
    code, out, _ = check(path, capsys)
    assert code == 0
    assert out.startswith(f"{path}: OK") and "1 backend," in out and "0 warnings" in out
