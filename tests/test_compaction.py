"""Compaction of the prediction store (`churnops store compact`): a day's many small files become
few, every row stays readable exactly once at every step of the protocol and after a crash at
any step, a reader's earlier listing stays readable for the grace period, retention and the
spool's takeover keep working; end to end while the real API writes, and on S3."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from churnops import lifecycle
from churnops.cli import main
from churnops.config import Settings
from churnops.errors import DataError, StoreBusyError
from churnops.monitoring import compaction, store
from churnops.serving import spool
from churnops.serving import writer as writer_module
from tests.conftest import ApiProcess, run_churnops, start_api, stop_api, wait_for
from tests.test_api import CUSTOMER
from tests.test_store import batch, dead, take_over

DAY = date(2026, 11, 30)


class Crash(Exception):
    """A compaction stopped dead at one step (as a killed process would be)."""


def moment(day: date, seconds: float) -> float:
    return datetime.combine(day, datetime.min.time(), UTC).timestamp() + seconds


def fill(target: store.Store, day: date, files: int, rows: int = 3, tag: str = "") -> list[str]:
    """``files`` small files of ``rows`` rows each in ``day``'s partition, as API flushes
    write them, with event times out of order; the ids written."""
    ids = []
    shuffle = random.Random(files)
    for n in range(files):
        names = [f"{tag}{day}-{n}-{i}" for i in range(rows)]
        at = moment(day, shuffle.uniform(0, 86_000))
        store.write_predictions(target, store.to_table([batch(names, time=at, served_at=at)]))
        ids += names
    return ids


def stored_ids(target: store.Store, day: date | None = None) -> list[str]:
    """Every id a reader sees (of one day, when given), duplicates kept."""
    since = None if day is None else datetime.combine(day, datetime.min.time(), UTC)
    until = None if since is None else since + timedelta(days=1)
    table = store.read_predictions(target, "m", since=since, until=until)
    return table["prediction_id"].to_pylist()


def exactly_once(target: store.Store, expected: list[str]) -> None:
    seen = Counter(stored_ids(target))
    assert [i for i, n in seen.items() if n > 1] == []
    assert sorted(seen) == sorted(expected)


def day_files(root: Path, day: date = DAY) -> list[str]:
    folder = root / "predictions" / f"date={day}"
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_many_small_files_of_a_day_become_one_time_sorted_file_with_the_same_rows(
    tmp_path: Path,
) -> None:
    target = store.open_store(str(tmp_path))
    ids = fill(target, DAY, files=120) + fill(target, DAY - timedelta(days=1), files=30)
    before = store.read_predictions(target, "m")

    report = compaction.compact(target, grace_seconds=0)

    assert [(d.day, d.files_before, d.files_after, d.rows) for d in report.days] == [
        ("2026-11-29", 30, 1, 90),
        ("2026-11-30", 120, 1, 360),
    ]
    assert report.deleted == 150 and report.waiting == 0
    exactly_once(target, ids)
    after = store.read_predictions(target, "m")
    assert after.sort_by("prediction_id").equals(before.sort_by("prediction_id"))
    [merged] = store.prediction_files(target, since=datetime(2026, 11, 30, tzinfo=UTC))
    assert merged.endswith(store.COMPACTED_SUFFIX)
    times = pq.read_table(merged)["time"].to_pylist()
    assert times == sorted(times)
    meta = pq.ParquetFile(merged).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    name = merged.rpartition("/")[2]
    record = name.removesuffix(store.COMPACTED_SUFFIX) + ".json"
    assert day_files(tmp_path) == sorted([name, f"_compacted/{record}"])


def test_a_closed_day_is_compacted_by_default_and_today_only_when_named(tmp_path: Path) -> None:
    target = store.open_store(str(tmp_path))
    today = datetime.now(UTC).date()
    fill(target, today, files=4)
    fill(target, today - timedelta(days=1), files=4)

    report = compaction.compact(target, grace_seconds=0)
    assert [d.day for d in report.days] == [str(today - timedelta(days=1))]
    assert len(store.prediction_files(target)) == 1 + 4

    named = compaction.compact(target, days=[today], grace_seconds=0)
    assert [(d.day, d.files_after) for d in named.days] == [(str(today), 1)]
    assert len(store.prediction_files(target)) == 2


def test_files_whose_columns_differ_by_version_merge_and_a_clashing_type_stays_apart(
    tmp_path: Path,
) -> None:
    target = store.open_store(str(tmp_path))
    at = moment(DAY, 60)
    kinds = [
        {"x": [1.5]},
        {"x": [None]},  # NB: a flush where x was null throughout: a null-typed column
        {"x": [2.5], "y": ["a"]},
        {"x": ["text"]},  # NB: no one schema holds x as text and as a number
        {"x": ["more"]},
    ]
    for n, columns in enumerate(kinds):
        rows = store.to_table([batch([f"k{n}"], time=at + n, served_at=at, columns=columns)])
        store.write_predictions(target, rows)

    report = compaction.compact(target, days=[DAY], grace_seconds=0)

    assert report.days[0].merged == 2 and report.days[0].files_after == 2
    # NB: read file by file: no one table holds both kinds of x (read_predictions refuses too).
    tables = [pq.read_table(path) for path in store.prediction_files(target)]
    by_kind = {str(t.schema.field("input.x").type): t for t in tables}
    assert by_kind["double"]["prediction_id"].to_pylist() == ["k0", "k1", "k2"]
    assert by_kind["double"]["input.y"].to_pylist() == [None, None, "a"]
    assert by_kind["string"]["prediction_id"].to_pylist() == ["k3", "k4"]


STEPS = ["record", "partial", "merged", "deleted"]


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_after_any_step_leaves_each_row_readable_once_and_the_next_run_finishes(
    tmp_path: Path, step: str
) -> None:
    target = store.open_store(str(tmp_path))
    ids = fill(target, DAY, files=12)

    def crash(at: str) -> None:
        if at == step:
            raise Crash(at)

    with pytest.raises(Crash):
        compaction.compact(target, days=[DAY], grace_seconds=0, observe=crash)
    exactly_once(target, ids)

    again = compaction.compact(target, days=[DAY], grace_seconds=0)

    exactly_once(target, ids)
    assert len(store.prediction_files(target)) == 1
    assert again.waiting == 0
    [merged] = [f for f in day_files(tmp_path) if not f.startswith("_")]
    # NB: nothing left over: no half-written file, no record of a merged file that never came.
    record = merged.removesuffix(store.COMPACTED_SUFFIX) + ".json"
    assert day_files(tmp_path) == sorted([f"_compacted/{record}", merged])


def test_a_reader_listing_at_every_step_sees_each_row_exactly_once(tmp_path: Path) -> None:
    target = store.open_store(str(tmp_path))
    ids = fill(target, DAY, files=10) + fill(target, DAY + timedelta(days=1), files=5)
    checked = []

    def read(at: str) -> None:
        exactly_once(target, ids)
        checked.append(at)

    compaction.compact(target, before=DAY + timedelta(days=2), grace_seconds=0, observe=read)

    assert checked[:3] == ["record", "partial", "merged"]
    assert checked.count("deleted") == 15
    exactly_once(target, ids)


def test_the_duckdb_engine_counts_each_row_once_at_every_step(tmp_path: Path) -> None:
    from churnops.monitoring.engine import open_engine

    target = store.open_store(str(tmp_path / "store"))
    ids = fill(target, DAY, files=10)
    counts = []

    def count(at: str) -> None:
        with open_engine(Settings(data_dir=tmp_path), "duckdb", target) as engine:
            sql = "SELECT count(*) AS n, count(DISTINCT prediction_id) AS d FROM predictions"
            answer = engine.query(sql)
        counts.append((at, int(answer["n"][0]), int(answer["d"][0])))

    compaction.compact(target, days=[DAY], grace_seconds=0, observe=count)

    assert {(n, d) for _, n, d in counts} == {(len(ids), len(ids))}
    assert [at for at, _, _ in counts][:3] == ["record", "partial", "merged"]


def test_a_reader_that_listed_before_compaction_can_read_its_files_for_the_grace_period(
    tmp_path: Path,
) -> None:
    target = store.open_store(str(tmp_path))
    ids = fill(target, DAY, files=8)
    listed = store.prediction_files(target)

    waiting = compaction.compact(target, days=[DAY], grace_seconds=3600)

    assert waiting.deleted == 0 and waiting.waiting == 8
    old_read = pa.concat_tables([pq.read_table(path) for path in listed])
    assert sorted(old_read["prediction_id"].to_pylist()) == sorted(ids)
    exactly_once(target, ids)
    assert len(store.prediction_files(target)) == 1
    assert "wait 3600 s for readers" in waiting.render()

    later = compaction.compact(target, days=[], grace_seconds=0)

    assert later.deleted == 8 and later.waiting == 0
    assert len(day_files(tmp_path)) == 2  # NB: the merged file and its record
    exactly_once(target, ids)


def test_new_files_after_a_compaction_merge_with_the_compacted_file_and_no_row_doubles(
    tmp_path: Path,
) -> None:
    target = store.open_store(str(tmp_path))
    ids = fill(target, DAY, files=6)
    compaction.compact(target, days=[DAY], grace_seconds=3600)  # NB: its sources still there
    ids += fill(target, DAY, files=4, tag="late-")

    second = compaction.compact(target, days=[DAY], grace_seconds=3600)

    assert (second.days[0].files_before, second.days[0].files_after) == (5, 1)
    exactly_once(target, ids)
    # NB: the first merged file goes before its own sources: the second record names them too.
    listed = {
        i.base_name: i
        for i in target.fs.get_file_info(
            pafs.FileSelector(target.path("predictions", f"date={DAY}"))
        )
    }
    first = min(n for n in listed if n.endswith(store.COMPACTED_SUFFIX))
    target.fs.delete_file(listed[first].path)
    exactly_once(target, ids)
    compaction.compact(target, days=[], grace_seconds=0)
    exactly_once(target, ids)
    assert len([f for f in day_files(tmp_path) if not f.startswith("_")]) == 1


def test_retention_deletes_compacted_days_with_their_records_and_keeps_newer_ones(
    tmp_path: Path,
) -> None:
    target = store.open_store(str(tmp_path))
    fill(target, DAY - timedelta(days=20), files=5)
    kept = fill(target, DAY, files=5)
    compaction.compact(target, before=DAY + timedelta(days=1), grace_seconds=0)

    assert store.apply_retention(target, retention_days=10, today=DAY) == 1

    assert day_files(tmp_path, DAY - timedelta(days=20)) == []
    exactly_once(target, kept)


def test_a_dead_writers_spooled_rows_that_were_compacted_are_not_written_again(
    tmp_path: Path,
) -> None:
    target = store.open_store(str(tmp_path))
    day = (DAY - date(1970, 1, 1)).days
    rows = store.to_table([batch(["s1"], time=moment(DAY, 5), served_at=moment(DAY, 5))])
    store.write_day(target, day, rows, time.time(), "host_a-1-abcd-1-3" + spool.SPOOLED_SUFFIX)
    fill(target, DAY, files=2)
    compaction.compact(target, days=[DAY], grace_seconds=0)
    assert not any(f.endswith(spool.SPOOLED_SUFFIX) for f in day_files(tmp_path))

    stored = spool.stored_entries(target)

    assert stored(spool.Entry("host_a-1-abcd", day, 2))
    assert not stored(spool.Entry("host_a-1-abcd", day, 4))


def test_a_worker_killed_before_deleting_its_spool_whose_file_was_compacted_stores_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, spooled = store.open_store(str(tmp_path / "store")), tmp_path / "spool"
    first = writer_module.BufferedWriter(target, 600, 10**6, 400, spool_dir=spooled)
    first.start()
    first.add(batch(["a", "b"]))
    first._convert()
    first.add(batch(["c"]))
    # NB: the file is written, then the process "dies" before its spool entries are deleted.
    with monkeypatch.context() as patched:
        patched.setattr(writer_module.Spool, "discard", staticmethod(lambda _paths: None))
        assert first.flush() == 3
    dead(first)
    today = datetime.now(UTC).date()
    ids = ["a", "b", "c", *fill(target, today, files=3)]
    compaction.compact(target, days=[today], grace_seconds=0)
    assert not any(f.endswith(spool.SPOOLED_SUFFIX) for f in day_files(tmp_path / "store", today))

    assert take_over(target, spooled) == 0

    exactly_once(target, ids)


def test_a_second_compaction_of_a_local_store_is_refused_while_one_runs(tmp_path: Path) -> None:
    target = store.open_store(str(tmp_path))
    ids = fill(target, DAY, files=3)
    refused = []

    def second(at: str) -> None:
        if at == "record":
            with pytest.raises(StoreBusyError, match="another `churnops store compact`") as exc:
                compaction.compact(target, days=[DAY], grace_seconds=0)
            refused.append(exc.value)

    compaction.compact(target, days=[DAY], grace_seconds=0, observe=second)

    assert len(refused) == 1
    exactly_once(target, ids)


def test_a_compacted_file_whose_record_is_gone_is_a_clear_error_not_double_rows(
    tmp_path: Path,
) -> None:
    target = store.open_store(str(tmp_path))
    fill(target, DAY, files=3)
    compaction.compact(target, days=[DAY], grace_seconds=3600)
    for record in (tmp_path / "predictions" / f"date={DAY}" / "_compacted").iterdir():
        record.unlink()

    with pytest.raises(DataError, match="has no record"):
        store.read_predictions(target, "m")


def test_prediction_files_keeps_only_the_days_between_since_and_until(tmp_path: Path) -> None:
    target = store.open_store(str(tmp_path))
    for offset in range(4):
        fill(target, DAY + timedelta(days=offset), files=2)
    since = datetime.combine(DAY + timedelta(days=1), datetime.min.time(), UTC) + timedelta(hours=5)

    files = store.prediction_files(target, since=since, until=since + timedelta(days=1))

    assert {f.split("/")[-2] for f in files} == {"date=2026-12-01", "date=2026-12-02"}
    assert len(files) == 4


@pytest.fixture
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv("CHURNOPS_PREDICTION_STORE", str(root))
    monkeypatch.setenv("CHURNOPS_DATA_DIR", str(tmp_path))
    return root


def test_the_command_compacts_and_reports_files_rows_bytes_and_seconds_as_json(
    store_env: Path,
) -> None:
    target = store.open_store(str(store_env))
    ids = fill(target, DAY, files=20)

    result = CliRunner().invoke(
        main, ["store", "compact", "--day", str(DAY), "--grace", "0", "--json"]
    )

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["files_before"] == 20 and document["files_after"] == 1
    assert document["rows"] == 60 and document["deleted"] == 20
    assert document["bytes_after"] < document["bytes_before"]
    assert document["days"][0]["day"] == str(DAY) and document["seconds"] >= 0
    exactly_once(target, ids)


def test_the_command_waits_out_the_grace_setting_and_says_so(
    store_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHURNOPS_STORE_COMPACT_GRACE_SECONDS", "600")
    fill(store.open_store(str(store_env)), DAY, files=3)

    result = CliRunner().invoke(main, ["store", "compact", "--before", "2026-12-01"])

    assert result.exit_code == 0, result.output
    assert "2026-11-30: 3 -> 1 files, 9 rows merged into 1 file(s)" in result.stdout
    assert "3 wait 600 s for readers" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--day", "2026-11-31"], "'2026-11-31' does not match the format"),
        (["--day", "2026-11-30", "--before", "2026-12-01"], "give --day or --before, not both"),
        (["--grace", "-1"], "-1"),
    ],
)
def test_bad_options_are_usage_errors_that_say_what_is_wrong(
    store_env: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(main, ["store", "compact", *args])

    assert result.exit_code == 64
    assert message in result.output


# NB: the end-to-end tests: the real API writing (slow), and an S3 store.


@pytest.fixture
def traffic_api(tracking_url: str, tmp_path: Path) -> Iterator[tuple[Settings, ApiProcess]]:
    name = f"churn_compact_{uuid.uuid4().hex[:8]}"
    settings = Settings(tracking_uri=tracking_url, model_name=name, data_dir=tmp_path)
    report = lifecycle.train(settings, data_file=None, version_label="v1", seed=3, gate_f1=0.6)
    lifecycle.promote(settings, report.version)
    env = {
        "MLFLOW_TRACKING_URI": tracking_url,
        "CHURNOPS_MODEL_NAME": name,
        "CHURNOPS_DATA_DIR": str(tmp_path),
        # NB: a flush every 0.2 s: many small files in the few seconds the test runs.
        "CHURNOPS_STORE_FLUSH_SECONDS": "0.2",
    }
    api = start_api(env, tmp_path / "serve.log", "--workers", "2")
    api.wait_until_every_worker_serves()
    yield settings, api
    stop_api(api)


def test_compacting_again_and_again_while_the_api_writes_loses_and_doubles_no_row(
    traffic_api: tuple[Settings, ApiProcess], tmp_path: Path
) -> None:
    settings, api = traffic_api
    target = store.settings_store(settings)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT12:00:00Z")
    answered: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    reads: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=api.url, timeout=10) as client:
            n = 0
            while not stop.is_set():
                n += 1
                headers = {"X-Event-Time": yesterday} if n % 2 else {}
                reply = client.post(
                    "/predict/batch", json={"customers": [CUSTOMER] * 3}, headers=headers
                )
                if reply.status_code != 200:
                    failures.append(reply.text)
                    continue
                answered.extend(p["prediction_id"] for p in reply.json()["predictions"])

    def read() -> None:
        # NB: a monitor reading meanwhile: never a row twice, never fewer rows than before.
        while not stop.is_set():
            ids = store.read_predictions(target, settings.model_name)["prediction_id"]
            seen = Counter(ids.to_pylist())
            if any(count > 1 for count in seen.values()):
                failures.append(f"a reader saw a row twice: {seen.most_common(1)}")
            if reads and len(seen) < reads[-1]:
                failures.append(f"a reader saw {len(seen)} rows after {reads[-1]}")
            reads.append(len(seen))

    def recording(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except Exception as exc:  # noqa: BLE001 -- the test thread reports it
                failures.append(repr(exc))
                stop.set()

        return run

    threads = [threading.Thread(target=recording(send)), threading.Thread(target=recording(read))]
    for thread in threads:
        thread.start()
    days = [datetime.now(UTC).date(), datetime.now(UTC).date() - timedelta(days=1)]
    runs = []
    try:
        wait_for(lambda: len(answered) > 30, timeout=30)
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and not stop.is_set():
            # NB: a grace far longer than one read of this store (~0.1 s), so the reader never
            # loses a file it listed; sources get deleted on the later runs.
            runs.append(compaction.compact(target, days=days, grace_seconds=5))
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    stop_api(api)
    assert failures == []
    assert len(reads) > 10 and reads[-1] > 0
    assert sum(r.deleted for r in runs) > 0 and sum(d.merged for r in runs for d in r.days) > 2

    final = run_churnops(
        "store",
        "compact",
        "--day",
        str(days[0]),
        "--day",
        str(days[1]),
        "--grace",
        "0",
        "--json",
        env={"CHURNOPS_DATA_DIR": str(tmp_path), "MLFLOW_TRACKING_URI": settings.tracking_uri},
    )
    assert final.returncode == 0, final.stderr
    stored = Counter(
        store.read_predictions(target, settings.model_name)["prediction_id"].to_pylist()
    )
    assert [i for i, n in stored.items() if n > 1] == []
    assert sorted(stored) == sorted(answered)
    assert len(store.prediction_files(target)) == 2


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SeaweedFS S3 endpoint for the module, its keys in the environment."""
    from tests.backends import S3, S3_ACCESS_KEY, S3_SECRET_KEY

    s3 = S3.start(tmp_path_factory.mktemp("s3"))
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
            env.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
            yield s3.endpoint
    finally:
        s3.stop()


def s3_store(endpoint: str) -> store.Store:
    from tests.backends import S3_BUCKET

    return store.open_store(f"s3://{S3_BUCKET}/{uuid.uuid4().hex[:8]}", endpoint)


def s3_day_keys(target: store.Store, day: date = DAY) -> list[str]:
    """The objects of a day partition, as names under it (pyarrow leaves an empty "folder/"
    marker where it deleted a folder's last file: not an object a reader reads)."""
    folder = target.path("predictions", f"date={day}")
    selector = pafs.FileSelector(folder, allow_not_found=True, recursive=True)
    return sorted(
        i.path.removeprefix(folder + "/")
        for i in target.fs.get_file_info(selector)
        if i.type == pafs.FileType.File
    )


@pytest.mark.slow
def test_an_s3_store_compacts_with_each_row_once_at_every_step_and_after_a_crash(
    s3_endpoint: str,
) -> None:
    target = s3_store(s3_endpoint)
    ids = fill(target, DAY, files=15)
    steps: list[str] = []

    def crash(at: str) -> None:
        raise Crash(at)

    def read(at: str) -> None:
        exactly_once(target, ids)
        steps.append(at)

    with pytest.raises(Crash):
        compaction.compact(target, days=[DAY], grace_seconds=0, observe=crash)
    exactly_once(target, ids)

    report = compaction.compact(target, days=[DAY], grace_seconds=0, observe=read)

    # NB: S3 has no rename: the merged object appears whole, after its record.
    assert steps == ["record", "merged", *["deleted"] * 15]
    assert (report.days[0].files_before, report.days[0].files_after) == (15, 1)
    [merged] = [k for k in s3_day_keys(target) if k.endswith(store.COMPACTED_SUFFIX)]
    record = merged.removesuffix(store.COMPACTED_SUFFIX) + ".json"
    assert s3_day_keys(target) == sorted([merged, f"_compacted/{record}"])


@pytest.mark.slow
@pytest.mark.parametrize("second_grace", [900, 0])
def test_two_compactions_of_an_s3_store_at_once_never_both_merge_a_file(
    s3_endpoint: str, second_grace: float
) -> None:
    target = s3_store(s3_endpoint)
    ids = fill(target, DAY, files=6)
    second: list[compaction.CompactionReport] = []

    def another_run_meanwhile(at: str) -> None:
        # NB: the second run lists the files the first is merging, its record already written
        # (with no grace, the second takes that record for a dead run's and deletes it).
        if at == "record" and not second:
            second.append(compaction.compact(target, days=[DAY], grace_seconds=second_grace))
            exactly_once(target, ids)

    first = compaction.compact(target, days=[DAY], grace_seconds=900, observe=another_run_meanwhile)

    merged = [d.merged for r in (first, second[0]) for d in r.days]
    assert sum(merged) == 1
    exactly_once(target, ids)
    assert len(store.prediction_files(target)) == 1
    compaction.compact(target, days=[], grace_seconds=0)
    exactly_once(target, ids)
    assert len([k for k in s3_day_keys(target) if not k.startswith("_")]) == 1
