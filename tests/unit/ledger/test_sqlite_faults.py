"""SqliteLedger against hostile or absurd conditions: a full disk, read-only and corrupt files,
files written by the previous schema, amounts and expiries far beyond any real budget. No mocks:
every failure is one sqlite itself reports."""

from __future__ import annotations

import asyncio
import math
import random
import sqlite3
import time
from pathlib import Path

import pytest

from nexus_grpc.errors import LedgerError
from nexus_grpc.ledger.base import (
    MAX_AMOUNT_NANO,
    MAX_TOTAL_NANO,
    Pending,
    Reservation,
    SettleResult,
    Totals,
    month_of,
)
from nexus_grpc.ledger.bounds import MAX_HOLD_SECS
from nexus_grpc.ledger.sqlite import SqliteLedger

MONTH = month_of(time.time())
G, T = "global", "tenant-a"

# The tables as the previous version created them (entries keyed by a column named request_id).
OLD_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ledger_totals (
        scope TEXT NOT NULL,
        month TEXT NOT NULL,
        spent_nano INTEGER NOT NULL DEFAULT 0,
        reserved_nano INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (scope, month)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS ledger_reservations (
        request_id TEXT PRIMARY KEY,
        scopes TEXT NOT NULL,
        amount_nano INTEGER NOT NULL,
        month TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ledger_reservations_expiry ON ledger_reservations (expires_at)",
    """CREATE TABLE IF NOT EXISTS ledger_charges (
        request_id TEXT PRIMARY KEY,
        scopes TEXT NOT NULL,
        month TEXT NOT NULL,
        charged_nano INTEGER NOT NULL,
        estimated INTEGER NOT NULL,
        provisional INTEGER NOT NULL,
        created_month TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ledger_charges_created ON ledger_charges (created_month)",
)


def res(key: str, amount: int, *, ttl: float = 300, request_id: str = "", note: str = "") -> Reservation:
    return Reservation(key, (G, T), amount, MONTH, time.time() + ttl, request_id, note)


def old_file(path: Path, statements: list[tuple[str, tuple[object, ...]]]) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for statement in OLD_SCHEMA:
            conn.execute(statement)
        for sql, args in statements:
            conn.execute(sql, args)
    conn.close()


def test_totals_saturate_and_stay_integers(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"

    async def body() -> None:
        ledger = SqliteLedger(path)
        await ledger.start()
        for i in range(300):  # 2**61 / 2**53 = 256 max-size charges reach the cap
            result = await ledger.settle(f"k{i}", [G, T], 10**30, MONTH, estimated=False)
            assert result == SettleResult(True, MAX_AMOUNT_NANO, False)
        assert await ledger.reserve(res("r", 10**40))
        assert await ledger.reserve(res("neg", -(10**40)))
        assert ledger.totals(G, MONTH) == Totals(MAX_TOTAL_NANO, MAX_AMOUNT_NANO)
        assert await ledger.get(T, MONTH) == Totals(MAX_TOTAL_NANO, MAX_AMOUNT_NANO)
        await ledger.close()

    asyncio.run(body())
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT typeof(spent_nano), spent_nano, typeof(reserved_nano), reserved_nano FROM ledger_totals"
        ).fetchall()
        kinds = conn.execute("SELECT DISTINCT typeof(charged_nano) FROM ledger_charges").fetchall()
    assert rows == [("integer", MAX_TOTAL_NANO, "integer", MAX_AMOUNT_NANO)] * 2
    assert kinds == [("integer",)]


def test_totals_an_earlier_version_stored_as_floats_are_repaired(tmp_path: Path) -> None:
    """Before amounts were bounded, an integer sum that overflowed became a REAL."""
    path = tmp_path / "ledger.db"
    old_file(
        path,
        [
            ("INSERT INTO ledger_totals VALUES (?, ?, ?, ?)", (G, MONTH, 1.8446744073709552e19, 12.0)),
            ("INSERT INTO ledger_totals VALUES (?, ?, ?, ?)", (T, MONTH, 2**62, -5)),
        ],
    )

    async def body() -> None:
        ledger = SqliteLedger(path)
        await ledger.start()
        assert ledger.totals(G, MONTH) == Totals(MAX_TOTAL_NANO, 12)
        assert ledger.totals(T, MONTH) == Totals(MAX_TOTAL_NANO, 0)
        await ledger.settle("more", [G, T], 5, MONTH, estimated=False)
        assert ledger.totals(G, MONTH) == Totals(MAX_TOTAL_NANO, 12)
        await ledger.close()

    asyncio.run(body())
    with sqlite3.connect(path) as conn:
        kinds = conn.execute("SELECT DISTINCT typeof(spent_nano), typeof(reserved_nano) FROM ledger_totals")
        assert kinds.fetchall() == [("integer", "integer")]


def test_absurd_expiries_are_clamped(tmp_path: Path) -> None:
    now = time.time()

    async def body() -> None:
        ledger = SqliteLedger(tmp_path / "ledger.db", wall=lambda: now)
        await ledger.start()
        absurd = {"far": 1e300, "inf": math.inf, "nan": math.nan, "ttl": now + 10**12}
        for key, expires_at in absurd.items():
            assert await ledger.reserve(Reservation(key, (G,), 5, MONTH, expires_at))
            stored = ledger.reservation(key)
            assert stored is not None and stored.expires_at == now + MAX_HOLD_SECS
        assert await ledger.reserve(Reservation("past", (G,), 5, MONTH, -math.inf))
        assert ledger.totals(G, MONTH) == Totals(0, 25)
        assert await ledger.expire(now) == ["past"]
        assert await ledger.expire(now + MAX_HOLD_SECS - 1) == []
        assert sorted(await ledger.expire(now + MAX_HOLD_SECS)) == sorted(absurd)
        assert ledger.totals(G, MONTH) == Totals(0, 0)
        await ledger.close()

    asyncio.run(body())


def test_a_file_of_the_previous_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    expires_at = time.time() + 300
    old_file(
        path,
        [
            ("INSERT INTO ledger_totals VALUES (?, ?, ?, ?)", (G, MONTH, 30, 40)),
            ("INSERT INTO ledger_totals VALUES (?, ?, ?, ?)", (T, MONTH, 25, 40)),
            (
                "INSERT INTO ledger_reservations VALUES (?, ?, ?, ?, ?)",
                ("old-res", '["global", "tenant-a"]', 40, MONTH, expires_at),
            ),
            (
                "INSERT INTO ledger_charges VALUES (?, ?, ?, ?, ?, ?, ?)",
                ("old-final", '["global", "tenant-a"]', MONTH, 25, 1, 0, MONTH),
            ),
            (
                "INSERT INTO ledger_charges VALUES (?, ?, ?, ?, ?, ?, ?)",
                ("old-prov", '["global"]', MONTH, 5, 1, 1, MONTH),
            ),
        ],
    )

    async def body() -> None:
        # two processes opening the old file together: the migration runs once, under the lock
        a, b = SqliteLedger(path), SqliteLedger(path)
        await asyncio.gather(a.start(), b.start())
        await b.close()
        assert a.reservation("old-res") == Reservation("old-res", (G, T), 40, MONTH, expires_at, "", "")
        assert await a.find("old-res") == Pending("old-res", (G, T), 40, MONTH, "", "", False)
        assert await a.find("old-final") == SettleResult(False, 25, True)
        assert await a.find("old-prov") == Pending("old-prov", (G,), 5, MONTH, "", "", True)
        assert await a.settle("old-final", [G], 99, MONTH, estimated=False) == SettleResult(False, 25, True)
        settled = await a.settle("old-prov", [G, T], 8, MONTH, estimated=False, request_id="q", note="n")
        assert settled == SettleResult(True, 8, False)
        assert await a.find_request("q") == SettleResult(False, 8, False)
        assert await a.find_request("") is None  # old rows carry no label
        assert await a.reserve(res("new", 3, request_id="q", note="priced"))
        assert await a.find_request("q") == Pending("new", (G, T), 3, MONTH, "q", "priced", False)
        assert a.totals(G, MONTH) == Totals(33, 43)
        await a.close()
        again = SqliteLedger(path)  # an upgraded file opens as it is
        await again.start()
        assert again.totals(G, MONTH) == Totals(33, 43)
        assert await again.find_request("q") == Pending("new", (G, T), 3, MONTH, "q", "priced", False)
        await again.close()

    asyncio.run(body())
    with sqlite3.connect(path) as conn:
        for table in ("ledger_reservations", "ledger_charges"):
            names = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            assert {"decision_key", "request_id", "note", "seq"} <= names
            assert "request_id" in {row[2] for row in conn.execute(f"PRAGMA index_info({table}_request)")}


def page_count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA page_count").fetchone()[0])
    finally:
        conn.close()


def test_a_full_disk_refuses_a_write_whole_and_the_next_write_clears_the_error(tmp_path: Path) -> None:
    """`max_page_count` stops the file from growing, as a full disk does: sqlite answers
    SQLITE_FULL ("database or disk is full") to a write that needs a new page. A note larger
    than a page always needs one (an overflow page)."""
    path = tmp_path / "ledger.db"
    big = "x" * 5000

    async def body() -> None:
        seed = SqliteLedger(path)
        await seed.start()
        assert await seed.reserve(res("held", 40, request_id="q"))
        await seed.settle("paid", [G, T], 10, MONTH, estimated=False)
        await seed.close()
        ledger = SqliteLedger(path, max_page_count=page_count(path))
        await ledger.start()
        assert ledger.write_error is None
        full = f"sqlite ledger {path}: disk is full"
        with pytest.raises(LedgerError) as refused:
            await ledger.reserve(res("big", 7, note=big))
        assert str(refused.value) == full
        assert ledger.write_error == full
        assert ledger.reservation("big") is None
        assert ledger.totals(G, MONTH) == Totals(10, 40)
        with pytest.raises(LedgerError, match="disk is full"):
            await ledger.settle("held", [G, T], 30, MONTH, estimated=False, note=big)
        held = ledger.reservation("held")
        assert held is not None and held.request_id == "q"  # still held: nothing was half-applied
        assert await ledger.find("held") == Pending("held", (G, T), 40, MONTH, "q", "", False)
        assert ledger.totals(T, MONTH) == Totals(10, 40)
        assert ledger.write_error == full
        # a write that fits in the pages there are succeeds and clears the error
        assert await ledger.settle("held", [G, T], 30, MONTH, estimated=False) == SettleResult(
            True, 30, False
        )
        assert ledger.write_error is None
        cached = ledger.totals(G, MONTH), ledger.reservation("held")
        await ledger.close()
        reopened = SqliteLedger(path)
        await reopened.start()
        assert (reopened.totals(G, MONTH), reopened.reservation("held")) == cached == (Totals(40, 0), None)
        assert await reopened.find("big") is None
        await reopened.close()

    asyncio.run(body())


def test_check_writable_reports_and_clears_a_write_error(tmp_path: Path) -> None:
    """PRAGMA query_only makes sqlite refuse every write on this connection with SQLITE_READONLY,
    the error a read-only file gives: check_writable's real write fails, then succeeds again."""
    path = tmp_path / "ledger.db"

    async def body() -> None:
        ledger = SqliteLedger(path)
        await ledger.start()
        assert await ledger.check_writable()
        await ledger._db.run(lambda conn: conn.execute("PRAGMA query_only = ON"))
        assert not await ledger.check_writable()
        assert ledger.write_error == f"sqlite ledger {path}: the file is read-only"
        with pytest.raises(LedgerError, match="read-only"):
            await ledger.settle("s", [G], 5, MONTH, estimated=False)
        assert ledger.totals(G, MONTH) == Totals(0, 0)
        await ledger._db.run(lambda conn: conn.execute("PRAGMA query_only = OFF"))
        assert ledger.write_error is not None  # until a write succeeds
        assert await ledger.check_writable()
        assert ledger.write_error is None
        assert await ledger.settle("s", [G], 5, MONTH, estimated=False) == SettleResult(True, 5, False)
        await ledger.close()

    asyncio.run(body())


def test_a_corrupt_file_fails_start_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(random.Random(7).randbytes(64 * 1024))

    async def body() -> None:
        ledger = SqliteLedger(path)
        with pytest.raises(LedgerError) as failed:
            await ledger.start()
        assert (
            str(failed.value)
            == f"sqlite ledger {path}: not a sqlite database (a corrupt file, or another kind of file)"
        )
        assert not ledger.available
        await ledger.close()

    asyncio.run(body())


def test_a_directory_in_place_of_the_file_fails_start(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.mkdir()

    async def body() -> None:
        with pytest.raises(LedgerError, match=f"^sqlite ledger {path}: cannot open the file$"):
            await SqliteLedger(path).start()

    asyncio.run(body())
