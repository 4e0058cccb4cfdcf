"""/ready means every worker of the API can answer, not just the one that took the probe's
connection: with one worker loading its model 8 s late (the slow-load failpoint), /ready is 503
on every try until the last worker has loaded, then 200."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from click.testing import Result

from tests.conftest import ok, start_api, stop_api, train_version, wait_for, worker_versions


def test_ready_waits_for_every_worker_while_one_of_them_still_loads_its_model(
    cli: Callable[..., Result], env: dict[str, str], tmp_path: Path
) -> None:
    version = train_version(cli, "--seed", "1")
    ok(cli("promote", "--json"))
    api = start_api(
        env | {"CHURNOPS_FAILPOINT": "slow-load"}, tmp_path / "serve.log", "--workers", "2"
    )
    try:

        def one_loaded() -> bool:
            return sorted(worker_versions(api.client).values()) == [0.0, float(version)]

        wait_for(one_loaded, timeout=60, interval=0.05)
        # NB: a probe opens a new connection, which either worker may take; /model first on
        # the same connection says which one answered the probe.
        probes: list[tuple[int | None, httpx.Response]] = []
        while one_loaded() and len(probes) < 200:
            with httpx.Client(base_url=api.url, timeout=10) as probe:
                answered_by = probe.get("/model").json()["version"]
                probes.append((answered_by, probe.get("/ready")))
            if any(v == version for v, _ in probes) and any(v is None for v, _ in probes):
                break
        by_loaded = [r for v, r in probes if v == version]
        assert by_loaded, "no probe reached the loaded worker before the other one loaded"
        assert {r.status_code for _, r in probes} == {503}
        assert "1 of 2 workers serve a model" in by_loaded[0].json()["detail"]
        api.wait_until_every_worker_serves(timeout=60)
        answers = [api.client.get("/ready") for _ in range(10)]
        assert {a.status_code for a in answers} == {200}
        assert {a.json()["model_version"] for a in answers} == {version}
    finally:
        stop_api(api)
