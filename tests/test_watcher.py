"""The alias watcher with a fake registry, without servers: a slow prefetch never delays
following the alias, a version that fails to load never replaces the one serving."""

from __future__ import annotations

import threading

import pytest

from churnops import watcher as watcher_module
from churnops.config import Settings
from churnops.registry import LoadedModel
from churnops.watcher import ModelWatcher
from tests.conftest import wait_for
from tests.test_api_edges import loaded


@pytest.fixture
def settings() -> Settings:
    return Settings(tracking_uri="http://127.0.0.1:9", poll_interval=0.05)


def test_a_prefetch_stuck_in_a_download_never_delays_a_move(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watcher_module, "PREFETCH_INTERVAL", 0.05)
    alias = {"version": 1}
    download_started, release = threading.Event(), threading.Event()

    def load(_: Settings, version: int) -> LoadedModel:
        if version == 3:  # the newest gate-passing version, fetched ahead of promotion
            download_started.set()
            release.wait(30)
        return loaded(version)

    watcher = ModelWatcher(
        settings,
        resolve=lambda _: alias["version"],
        load=load,
        latest=lambda _: 3,
        pinned=lambda _s, _v: None,
    )
    watcher.start()
    try:
        wait_for(lambda: watcher.current and watcher.current.version == 1, timeout=5)
        assert download_started.wait(5)
        alias["version"] = 2
        wait_for(lambda: watcher.current and watcher.current.version == 2, timeout=30)
        assert not release.is_set()  # v2 served while v3's download still hangs
    finally:
        release.set()
        watcher.stop()


def test_a_version_that_fails_to_load_leaves_the_serving_one_and_backs_off(
    settings: Settings,
) -> None:
    alias = {"version": 1}
    attempts: list[int] = []

    def load(_: Settings, version: int) -> LoadedModel:
        attempts.append(version)
        if version == 2:
            raise OSError("artifact store unreachable")
        return loaded(version)

    watcher = ModelWatcher(
        settings,
        resolve=lambda _: alias["version"],
        load=load,
        latest=lambda _: None,
        pinned=lambda _s, _v: None,
    )
    watcher.poll_once()
    alias["version"] = 2
    for _ in range(20):
        watcher.poll_once()
    assert watcher.current is not None and watcher.current.version == 1
    assert watcher.last_error is not None and "artifact store unreachable" in watcher.last_error
    # Backed off: the 19 polls after the first failure did not each retry the download.
    assert 1 <= attempts.count(2) < 5
