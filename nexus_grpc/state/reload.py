"""`[server] watch_config`: reload the configuration when its file changes.

Once a second the file's size, mtime and content hash are compared with the last ones seen;
a change that is still settling (another change within `settle_seconds`) is waited out, then the
runtime reloads (validating the whole file; a bad file changes nothing and counts as a failed
reload). A content already active (same version) or already tried is not reloaded again, so a
bad file counts once, not once a second. A missing file (a rename in progress) is skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from nexus_grpc.config.errors import ConfigError

log = logging.getLogger("nexus_grpc")

POLL_SECONDS = 1.0
SETTLE_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class Fingerprint:
    size: int
    mtime_ns: int
    version: str  # the same hash the loader uses for Config.version


def fingerprint(path: Path) -> Fingerprint:
    data = path.read_bytes()
    stat = os.stat(path)
    return Fingerprint(len(data), stat.st_mtime_ns, hashlib.sha256(data).hexdigest()[:12])


class ConfigWatcher:
    """`run()` polls on its own; tests drive `start()` and `poll()` directly, with `sleep`
    replaced so that no test waits in real time. `polls` counts the looks `run()` finished (the
    first fingerprint is taken before the first one), so a test can wait on them."""

    def __init__(
        self,
        path: Path,
        reload: Callable[[], Awaitable[object]],
        active_version: Callable[[], str],
        *,
        poll_seconds: float = POLL_SECONDS,
        settle_seconds: float = SETTLE_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.path = path
        self._reload = reload
        self._active_version = active_version
        self.poll_seconds = poll_seconds
        self.settle_seconds = settle_seconds
        self._sleep = sleep
        self.reloads = 0  # reloads this watcher started (successful or not)
        self.polls = 0  # looks at the file `run()` finished (a failed one too)
        self._missing_logged = False
        self._seen: Fingerprint | None = None

    async def _read(self) -> Fingerprint | None:
        try:
            found = await asyncio.to_thread(fingerprint, self.path)
        except OSError as exc:
            if not self._missing_logged:
                log.warning("watch_config: cannot read %s (%s); waiting for it", self.path, exc)
                self._missing_logged = True
            return None
        self._missing_logged = False
        return found

    async def start(self) -> None:
        """Take the first fingerprint: what the file holds now counts as seen."""
        self._seen = await self._read()

    async def run(self) -> None:
        await self.start()
        while True:
            await self._sleep(self.poll_seconds)
            try:
                await self.poll()
            except Exception:  # the watcher must outlive a bug
                log.exception("watch_config: checking %s failed; retrying", self.path)
            self.polls += 1

    async def poll(self) -> bool:
        """One look at the file; True when it started a reload."""
        seen = self._seen
        current = await self._read()
        if current is None or current == seen:
            return False
        # let a writer finish: reload only once the file holds still
        while True:
            await self._sleep(self.settle_seconds)
            settled = await self._read()
            if settled is None or settled == current:
                break
            current = settled
        same = seen is not None and current.version == seen.version
        self._seen = current
        if same:
            return False  # touched, not changed
        if current.version == self._active_version():
            return False  # already active (a SIGHUP or ReloadConfig got there first)
        await self._reload_once()
        return True

    async def _reload_once(self) -> None:
        self.reloads += 1
        log.info("watch_config: %s changed; reloading", self.path)
        try:
            await self._reload()
        except ConfigError as exc:
            log.error("config reload refused, old config kept:\n%s", exc)
