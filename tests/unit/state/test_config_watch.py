"""`[server] watch_config`: the file watcher reloads on a change, once per distinct content.

The watcher is driven step by step (`start`, then one `poll` per look at the file) with a sleep
that returns at once: no test waits in real time."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from support.net import async_wait_until

from nexus_grpc.config.errors import ConfigError, ConfigIssue
from nexus_grpc.state.reload import ConfigWatcher, fingerprint


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


async def no_wait(seconds: float) -> None:
    return None


def with_watcher(path: Path, body: Callable[[Target, ConfigWatcher], Awaitable[None]]) -> None:
    async def main() -> None:
        target = Target(path)
        watcher = ConfigWatcher(path, target.reload, lambda: target.active, sleep=no_wait)
        await watcher.start()
        await body(target, watcher)

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
        assert not await watcher.poll()
        assert target.calls == []
        path.write_text("v = 2\n")  # same size: the hash tells
        assert await watcher.poll()
        assert target.active == version_of("v = 2\n")
        os.utime(path, ns=(1, 1))  # touched, same content
        assert not await watcher.poll()
        assert target.calls == ["v = 2\n"]

    with_watcher(path, body)


def test_a_bad_file_counts_once_and_the_next_good_one_applies(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("v = 1\n")

    async def body(target: Target, watcher: ConfigWatcher) -> None:
        path.write_text("v = bad\n")
        assert await watcher.poll()
        for _ in range(3):
            assert not await watcher.poll()  # not once per poll
        assert target.failures == 1
        assert target.active == version_of("v = 1\n")
        path.write_text("v = 3\n")
        assert await watcher.poll()
        assert target.active == version_of("v = 3\n")
        assert watcher.reloads == 2

    with_watcher(path, body)


def test_content_already_active_is_not_reloaded_and_a_missing_file_waits(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("v = 1\n")

    async def body(target: Target, watcher: ConfigWatcher) -> None:
        target.active = version_of("v = 2\n")  # a SIGHUP already applied it
        path.write_text("v = 2\n")
        assert not await watcher.poll()
        assert target.calls == []
        path.unlink()
        assert not await watcher.poll()
        path.write_text("v = 4\n")  # back (a rename-into-place finished)
        assert await watcher.poll()
        assert target.calls == ["v = 4\n"]

    with_watcher(path, body)


def test_a_file_still_being_written_is_read_once_it_holds_still(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("v = 1\n")
    writes = iter(["v = 2 # half\n", "v = 2 # done, longer\n"])

    async def writer_still_busy(seconds: float) -> None:
        text = next(writes, None)  # the writer changes the file between two looks
        if text is not None:
            path.write_text(text)

    async def main() -> None:
        target = Target(path)
        watcher = ConfigWatcher(path, target.reload, lambda: target.active, sleep=writer_still_busy)
        await watcher.start()
        path.write_text("v = 2\n")
        assert await watcher.poll()
        assert target.calls == ["v = 2 # done, longer\n"]  # only the settled content

    asyncio.run(main())


def test_run_polls_until_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("v = 1\n")

    async def main() -> None:
        target = Target(path)

        async def tick(seconds: float) -> None:
            await asyncio.sleep(0)  # a yield, not a wait: the test runs between two looks

        watcher = ConfigWatcher(path, target.reload, lambda: target.active, sleep=tick)
        task = asyncio.create_task(watcher.run())
        # the first fingerprint is taken before the first look: a change after it is one to reload
        await async_wait_until(lambda: watcher.polls >= 1, "the watcher's first look")
        assert target.calls == []
        path.write_text("v = 2\n")
        await async_wait_until(lambda: target.calls, "the watcher reloads the changed file")
        looked = watcher.polls
        await async_wait_until(lambda: watcher.polls >= looked + 3, "three more looks")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert target.calls == ["v = 2\n"]  # once, not once per look
        assert watcher.reloads == 1

    asyncio.run(main())
