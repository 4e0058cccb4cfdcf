"""The prediction store without servers: the API's rows (ids, customer ids, event times, inputs)
written by the background writer and all there after shutdown, day partitions, retention by age."""

from __future__ import annotations

import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from churnops.config import Settings
from churnops.monitoring import store
from churnops.serving import writer as writer_module
from churnops.serving.app import create_app
from churnops.serving.routing import ChallengerRoute
from tests.conftest import wait_for
from tests.test_api_edges import CUSTOMER, loaded, watcher_for


def settings_for(tmp_path: Path) -> Settings:
    return Settings(
        tracking_uri="http://127.0.0.1:9",
        data_dir=tmp_path,
        store_flush_seconds=60,
    )


def serve(settings: Settings) -> TestClient:
    watcher = watcher_for(settings, None, loaded())
    watcher.poll_once()
    # NB: no challenger, and no registry to ask: its watcher would retry a dead address for 30 s.
    challenger = ChallengerRoute(settings)
    challenger.watcher._resolve = lambda _: None
    return TestClient(create_app(settings, watcher, challenger), base_url="http://127.0.0.1:8000")


def batch(ids: list[str], **given: Any) -> store.Batch:
    """A batch of ``ids`` with sane defaults; ``given`` overrides any field."""
    fields: dict[str, Any] = {
        "time": None,
        "served_at": datetime.now(UTC).timestamp(),
        "source": "api",
        "model": "m",
        "version": 1,
        "alias": "production",
        "threshold": 0.5,
        "prediction_ids": ids,
        "probabilities": [0.5] * len(ids),
        "labels": [1] * len(ids),
        "customer_ids": None,
        "request_id": "r",
        "columns": {"x": [1.0] * len(ids)},
    }
    return store.Batch(**(fields | given))


def dead(writer: writer_module.BufferedWriter) -> None:
    """As if the writer's process died: its threads stop writing anything, and the kernel
    releases its spool lock."""
    writer._stop.set()  # NB: not woken: a wake-up would convert and write what is queued
    for thread in (writer._thread, writer._writes):
        assert thread is not None
        thread.join(timeout=10)
    assert writer._spool is not None
    os.close(writer._spool._lock)


def take_over(target: store.Store, spool: Path) -> int:
    """A new writer on the spool: it takes the dead writers' rows over and writes them; how
    many rows it recovered."""
    writer = writer_module.BufferedWriter(target, 600, 10**6, 400, spool_dir=spool)
    writer.start()
    recovered = writer.state().recovered_rows
    writer.close()
    return recovered


def stored_ids(target: store.Store) -> list[str]:
    return sorted(store.read_predictions(target, "m")["prediction_id"].to_pylist())


def stored(settings: Settings) -> pa.Table:
    return store.read_predictions(store.settings_store(settings), settings.model_name)


def test_every_answered_row_is_in_the_store_with_its_prediction_id_after_shutdown(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    answered = []
    with serve(settings) as client:
        for i in range(30):
            body = client.post("/predict", json={**CUSTOMER, "customer_id": f"c{i}"}).json()
            answered.append(body["prediction_id"])
        batch = client.post(
            "/predict/batch", json={"customers": [CUSTOMER, {**CUSTOMER, "customer_id": 7}]}
        ).json()
        answered += [p["prediction_id"] for p in batch["predictions"]]
        # NB: the flush interval is 60 s: nothing is written until shutdown flushes it.
        assert stored(settings).num_rows == 0
    rows = stored(settings).to_pylist()
    assert sorted(r["prediction_id"] for r in rows) == sorted(answered)
    assert len(set(answered)) == 32
    by_id = {r["prediction_id"]: r for r in rows}
    assert by_id[answered[3]]["customer_id"] == "c3"
    assert by_id[answered[-1]]["customer_id"] == "7" and by_id[answered[-2]]["customer_id"] is None
    first = by_id[answered[0]]
    assert first["source"] == "api" and first["version"] == 1 and first["alias"] == "production"
    assert first["probability"] == 0.5 and first["label"] == 1 and first["threshold"] == 0.5
    assert first["input.tenure_months"] == 3 and first["input.plan_type"] == "basic"
    assert "input.customer_id" not in first


def test_a_customer_id_is_accepted_but_never_reaches_the_model(tmp_path: Path) -> None:
    seen: list[list[str]] = []
    model = loaded()
    original = model.engine.predict_columns

    def recording(columns):
        seen.append(sorted(columns))
        return original(columns)

    model.engine.predict_columns = recording  # type: ignore[method-assign]
    settings = settings_for(tmp_path).model_copy(update={"store_predictions": False})
    watcher = watcher_for(settings, None, model)
    watcher.poll_once()
    client = TestClient(create_app(settings, watcher), base_url="http://127.0.0.1:8000")
    response = client.post("/predict", json={**CUSTOMER, "customer_id": "C42"})
    assert response.status_code == 200
    assert seen[-1] == ["plan_type", "tenure_months"]
    too_long = client.post("/predict", json={**CUSTOMER, "customer_id": "x" * 129})
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["loc"][:2] == ["body", "customer_id"]


def test_an_event_time_header_dates_the_stored_row_and_a_bad_one_is_a_422(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    with serve(settings) as client:
        ok = client.post("/predict", json=CUSTOMER, headers={"X-Event-Time": "2026-01-05T10:00Z"})
        assert ok.status_code == 200
        for bad in ("yesterday", "2026-01-05T10:00", "2999-01-01T00:00Z"):
            refused = client.post("/predict", json=CUSTOMER, headers={"X-Event-Time": bad})
            assert refused.status_code == 422, bad
            assert "X-Event-Time" in refused.json()["detail"]
    [row] = stored(settings).to_pylist()
    assert row["time"] == datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    assert row["served_at"] > row["time"]
    day_folders = list((tmp_path / "store" / "predictions").iterdir())
    assert [f.name for f in day_folders] == ["date=2026-01-05"]


def test_retention_deletes_day_partitions_older_than_the_limit_only(tmp_path: Path) -> None:
    target = store.open_store(str(tmp_path))
    today = date(2026, 12, 1)
    for days_ago in (0, 10, 11, 40):
        moment = datetime.combine(today - timedelta(days=days_ago), datetime.min.time(), UTC)
        day = batch([f"p{days_ago}"], time=moment.timestamp(), served_at=moment.timestamp())
        store.write_predictions(target, store.to_table([day]))
    assert store.apply_retention(target, retention_days=10, today=today) == 2
    left = store.read_predictions(target, "m")["prediction_id"].to_pylist()
    assert sorted(left) == ["p0", "p10"]


@pytest.mark.parametrize("value", [[1, 2.5, None], ["a", None, "b"], [None, None, None]])
def test_input_columns_of_any_kind_round_trip_through_parquet(tmp_path: Path, value: list) -> None:
    target = store.open_store(str(tmp_path))
    store.write_predictions(target, store.to_table([batch(["a", "b", "c"], columns={"x": value})]))
    table = store.read_predictions(target, "m")
    assert table["input.x"].to_pylist() == [None if v is None else v for v in value]


def test_a_failed_write_keeps_the_rows_and_the_next_flush_writes_them(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.write_text("not a folder yet")  # every write fails while this file is in the way
    writer = writer_module.BufferedWriter(store.open_store(str(root)), 600, 10**6, 400)
    for i in range(5):
        writer.add(batch([f"p{i}"]))
    assert writer.flush() == 0 and writer.failed_flushes == 1
    assert writer.unwritten() == 5
    root.unlink()
    assert writer.flush() == 5 and writer.unwritten() == 0
    rows = store.read_predictions(store.open_store(str(root)), "m")
    assert sorted(rows["prediction_id"].to_pylist()) == [f"p{i}" for i in range(5)]


def test_an_event_time_before_1970_is_a_422_and_nothing_is_stored(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    with serve(settings) as client:
        for bad in ("0001-01-01T00:00:00+14:00", "1969-12-31T23:59:59Z"):
            refused = client.post("/predict", json=CUSTOMER, headers={"X-Event-Time": bad})
            assert refused.status_code == 422, bad
            assert "before 1970" in refused.json()["detail"]
        assert client.post("/predict", json=CUSTOMER).status_code == 200
    assert stored(settings).num_rows == 1


def test_the_writer_skips_and_counts_a_row_it_cannot_keep_and_writes_every_other_one(
    tmp_path: Path,
) -> None:
    writer = writer_module.BufferedWriter(store.open_store(str(tmp_path)), 0.05, 10**6, 400)
    writer.start()
    try:
        writer.add(batch(["before"]))
        # NB: year 0 once killed the writer thread: nothing after it was ever written.
        writer.add(batch(["year0"], time=-62135647200.0))
        writer.add(batch(["nan"], time=float("nan")))
        writer.add(batch(["after"]))
        wait_for(lambda: writer.written_rows == 2, timeout=10)
        writer.add(batch(["later"]))
        wait_for(lambda: writer.written_rows == 3, timeout=10)
        assert writer._thread is not None and writer._thread.is_alive()
    finally:
        writer.close()
    assert writer.state().bad_rows == 2 and writer.unwritten() == 0
    ids = store.read_predictions(store.open_store(str(tmp_path)), "m")["prediction_id"]
    assert sorted(ids.to_pylist()) == ["after", "before", "later"]


def test_an_unwritable_store_bounds_the_buffer_drops_and_counts_the_rest_and_backs_off(
    tmp_path: Path,
) -> None:
    root = tmp_path / "store"
    root.write_text("not a folder")  # every write fails while this file is in the way
    writer = writer_module.BufferedWriter(
        store.open_store(str(root)), 0.02, buffer_rows=5, retention_days=400, max_rows=50
    )
    writer.start()
    try:
        for i in range(80):
            writer.add(batch([f"p{i}"]))
            time.sleep(0.01)  # ~0.8 s of traffic: a flush every 0.02 s were it not backing off
        state = writer.state()
        assert state.unwritten_rows == 50 and state.dropped_rows == 30
        # NB: tries after 0, 1 and 3 s, however slow this machine is; without the backoff, one
        # every 0.02 s (~40).
        assert 1 <= state.failed_writes <= 3
        assert state.retry_in_seconds is not None and state.last_error
        root.unlink()
    finally:
        writer.close()
    assert writer.written_rows == 50 and writer.state().dropped_rows == 30
    ids = store.read_predictions(store.open_store(str(root)), "m")["prediction_id"].to_pylist()
    assert sorted(ids) == sorted(f"p{i}" for i in range(50))


def test_rows_a_stopped_worker_could_not_write_are_spooled_and_written_by_the_next_start(
    tmp_path: Path,
) -> None:
    root, spool = tmp_path / "store", tmp_path / "spool"
    root.write_text("not a folder")
    first = writer_module.BufferedWriter(
        store.open_store(str(root)), 600, 10**6, 400, spool_dir=spool
    )
    first.start()
    for i in range(7):
        first.add(batch([f"p{i}"]))
    first.close()
    assert first.unwritten() == 7 and list(spool.glob("*.arrow"))
    root.unlink()
    assert take_over(store.open_store(str(root)), spool) == 7
    assert stored_ids(store.open_store(str(root))) == [f"p{i}" for i in range(7)]
    assert not list(spool.iterdir())


def test_a_living_writers_spool_is_never_taken_over(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    target = store.open_store(str(tmp_path / "store"))
    alive = writer_module.BufferedWriter(target, 600, 10**6, 400, spool_dir=spool)
    alive.start()
    alive.add(batch(["mine"]))
    alive._convert()  # now in its spool
    other = writer_module.BufferedWriter(target, 600, 10**6, 400, spool_dir=spool)
    other.start()
    assert other.state().recovered_rows == 0
    other.close()
    alive.close()
    ids = store.read_predictions(target, "m")["prediction_id"].to_pylist()
    assert ids == ["mine"]


def test_the_model_endpoint_reports_the_store_writers_counts(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    with serve(settings) as client:
        client.post("/predict", json=CUSTOMER)
        state = client.get("/model").json()["store"]
        assert state["unwritten_rows"] == 1 and state["dropped_rows"] == 0
        assert client.get("/ready").json()["store"]["unwritten_rows"] == 1
        metrics = client.get("/metrics").text
        assert "churnops_store_unwritten_rows" in metrics


def test_a_writer_killed_between_writing_and_deleting_its_spool_never_stores_a_row_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, spool = store.open_store(str(tmp_path / "store")), tmp_path / "spool"
    first = writer_module.BufferedWriter(target, 600, 10**6, 400, spool_dir=spool)
    first.start()
    first.add(batch(["a", "b"]))
    first._convert()
    first.add(batch(["c"]))
    # NB: the file is written, then the process "dies" before its spool entries are deleted.
    with monkeypatch.context() as patched:
        patched.setattr(writer_module.Spool, "discard", staticmethod(lambda _paths: None))
        assert first.flush() == 3
    first.add(batch(["d"]))
    first._convert()  # "d" is spooled, not written
    dead(first)
    assert take_over(target, spool) == 1
    assert stored_ids(target) == ["a", "b", "c", "d"]


def test_a_takeover_that_loads_part_of_a_backlog_never_loses_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, spool = store.open_store(str(tmp_path / "store")), tmp_path / "spool"
    first = writer_module.BufferedWriter(target, 600, 10**6, 400, spool_dir=spool)
    first.start()
    for name in ("e1", "e2", "e3"):
        first.add(batch([name]))
        first._convert()
    dead(first)
    # NB: memory holds two rows: e3 stays in the spool while e1, e2 and a new row are written.
    second = writer_module.BufferedWriter(target, 600, 10**6, 400, max_rows=2, spool_dir=spool)
    second.start()
    assert second.state().recovered_rows == 2
    second.max_rows = 10
    second.add(batch(["fresh"]))
    with monkeypatch.context() as patched:
        # NB: killed right after the write: no spool file deleted, nothing more loaded.
        patched.setattr(writer_module.Spool, "discard", staticmethod(lambda _paths: None))
        patched.setattr(second, "_load_backlog", lambda: None)
        assert second.flush() == 3
    dead(second)
    assert take_over(target, spool) == 1
    assert stored_ids(target) == ["e1", "e2", "e3", "fresh"]


def test_a_failed_write_after_a_bad_table_requeues_only_what_was_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = store.open_store(str(tmp_path / "store"))
    writer = writer_module.BufferedWriter(target, 600, 10**6, 400)
    for name in ("ok", "second", "third"):
        writer.add(batch([name]))
        writer._convert()  # NB: three conversion ticks, three tables
    real = writer_module.write_day
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args[2].column("prediction_id").to_pylist())
        if len(calls) == 1:
            raise ValueError("a value no file can hold")  # the combined file: table by table
        if len(calls) == 3:
            raise OSError("disk full")  # then the store fails
        return real(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(writer_module, "write_day", flaky)
        writer.flush()
    assert calls == [["ok", "second", "third"], ["ok"], ["second"]]
    # NB: "ok" is written and never queued again; "second" and "third" wait.
    assert writer.written_rows == 1 and writer.unwritten() == 2
    assert writer.flush() == 2
    ids = store.read_predictions(target, "m")["prediction_id"].to_pylist()
    assert sorted(ids) == ["ok", "second", "third"] and writer.written_rows == 3
