"""`[server] watch_config`: the file watcher reloads on a change, once per distinct content."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from nexus_grpc.config.errors import ConfigError, ConfigIssue
from nexus_grpc.state.reload import ConfigWatcher, fingerprint

FAST = {"poll_seconds": 0.02, "settle_seconds": 0.01}


def version_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Target:
    """Stands for the runtime: reload reads the file; "bad" content is refused."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.active = version_of(path.read_text())
        self.calls: list[str] = []
        self.failures = 0

    async def reload(self) -> None:
        text = self.path.read_text()
        self.calls.append(text)
        if "bad" in text:
            self.failures += 1
            raise ConfigError([ConfigIssue(str(self.path), "x", "bad")])
        self.active = version_of(text)


async def settle(cond: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def with_watcher(path: Path, body: Callable[[Target, ConfigWatcher], Awaitable[None]]) -> None:
    async def main() -> None:
        target = Target(path)
        watcher = ConfigWatcher(path, target.reload, lambda: target.active, **FAST)
        task = asyncio.create_task(watcher.run())
        await asyncio.sleep(0.05)  # the first fingerprint is taken
        try:
            await body(target, watcher)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


def test_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("a = 1\n")
    fp = fingerprint(path)
    assert (fp.size, fp.version) == (6, version_of("a = 1\n"))


def test_a_change_reloads_once_and_a_touch_does_not(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("v = 1\n")

    async def body(target: Target, watcher: ConfigWatcher) -> None:
        await asyncio.sleep(0.1)
        assert target.calls == []
        path.write_text("v = 2\n")  # same size: the hash tells
        await settle(lambda: target.active == version_of("v = 2\n"))
        os.utime(path, ns=(1, 1))  # touched, same content
        await asyncio.sleep(0.15)
        assert target.calls == ["v = 2\n"]

    with_watcher(path, body)


def test_a_bad_file_counts_once_and_the_next_good_one_applies(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("v = 1\n")

    async def body(target: Target, watcher: ConfigWatcher) -> None:
        path.write_text("v = bad\n")
        await settle(lambda: target.failures == 1)
        await asyncio.sleep(0.2)
        assert target.failures == 1  # not once per poll
        assert target.active == version_of("v = 1\n")
        path.write_text("v = 3\n")
        await settle(lambda: target.active == version_of("v = 3\n"))
        assert watcher.reloads == 2

    with_watcher(path, body)


def test_content_already_active_is_not_reloaded_and_a_missing_file_waits(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("v = 1\n")

    async def body(target: Target, watcher: ConfigWatcher) -> None:
        target.active = version_of("v = 2\n")  # a SIGHUP already applied it
        path.write_text("v = 2\n")
        await asyncio.sleep(0.15)
        assert target.calls == []
        path.unlink()
        await asyncio.sleep(0.1)
        path.write_text("v = 4\n")  # back (a rename-into-place finished)
        await settle(lambda: target.active == version_of("v = 4\n"))
        assert target.calls == ["v = 4\n"]

    with_watcher(path, body)
