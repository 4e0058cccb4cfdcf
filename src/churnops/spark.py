"""The SparkSession every Spark user in churnops builds (`score --engine spark`, the monitor's
spark engine): from the settings' master (CHURNOPS_SPARK_MASTER) and extra settings
(CHURNOPS_SPARK_CONF), with defaults that suit a laptop or a CI runner on a local master.

pyspark is an optional extra and Spark needs Java 17, so both are checked before a JVM starts:
each missing piece is one EngineError line naming the fix, never a py4j traceback. Nothing here
imports pyspark until :func:`session` is called.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from churnops.config import Settings
from churnops.errors import EngineError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

APP_NAME = "churnops"
JAVA_MAJOR = 17
INSTALL_PYSPARK = "the spark engine needs pyspark: pip install 'churnops[spark]'"
INSTALL_JAVA = (
    "install it (apt-get install openjdk-17-jre-headless) or set JAVA_HOME to a Java 17 "
    "installation"
)
# NB: the master URL forms Spark documents; anything else fails inside the JVM with a trace.
_MASTER = re.compile(
    r"local(\[(\*|\d+)(,\s*\d+)?\])?"
    r"|local-cluster\[\d+,\s*\d+,\s*\d+\]"
    r"|(spark|k8s|mesos)://\S+"
    r"|yarn"
)
_LOCAL = re.compile(r"local(\[(\*|\d+)(,\s*\d+)?\])?")
_KEY = re.compile(r"[A-Za-z][\w.-]*")
# NB: Spark's own default profile logs every stage at INFO/WARN on stderr; churnops prints
# its one-line result and errors, so only Spark's errors are let through.
_LOG4J2 = """\
rootLogger.level = error
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
"""


def parse_conf(text: str) -> dict[str, str]:
    """CHURNOPS_SPARK_CONF's ``key=value`` pairs. A comma followed by something that is not
    ``key=`` continues the previous value, so list values (``spark.jars=a.jar,b.jar``) work."""
    found: dict[str, str] = {}
    last: str | None = None
    for piece in text.split(","):
        if not piece.strip():
            continue
        key, equals, value = piece.partition("=")
        if equals and _KEY.fullmatch(key.strip()):
            last = key.strip()
            found[last] = value.strip()
        elif last is not None:
            found[last] += "," + piece
        else:
            raise EngineError(
                f"CHURNOPS_SPARK_CONF: {piece.strip()!r} is not key=value; give comma-separated "
                "pairs, e.g. spark.executor.memory=4g,spark.sql.shuffle.partitions=64"
            )
    return found


def check_master(master: str) -> None:
    """EngineError naming CHURNOPS_SPARK_MASTER unless ``master`` is a master URL Spark takes."""
    if not _MASTER.fullmatch(master.strip()):
        raise EngineError(
            f"CHURNOPS_SPARK_MASTER={master!r} is not a Spark master URL; use local[N], "
            "spark://host:7077, yarn or k8s://https://host:port"
        )


def local_cores(master: str) -> int | None:
    """The cores a ``local[...]`` master uses; None for a cluster."""
    match = _LOCAL.fullmatch(master.strip())
    if match is None:
        return None
    count = match.group(2)
    if count is None:
        return 1
    if count == "*":
        return os.cpu_count() or 1
    return max(1, int(count))


def java_command() -> str:
    """The java Spark will launch (JAVA_HOME's, else the one on PATH), checked to be Java 17 or
    later; EngineError naming the fix otherwise."""
    home = os.environ.get("JAVA_HOME")
    if home:
        java = str(Path(home) / "bin" / "java")
        if not os.access(java, os.X_OK):
            raise EngineError(
                f"the spark engine needs Java {JAVA_MAJOR}, and JAVA_HOME={home} has no bin/java: "
                + INSTALL_JAVA
            )
    else:
        found = shutil.which("java")
        if found is None:
            raise EngineError(
                f"the spark engine needs Java {JAVA_MAJOR}, and there is no java on PATH: "
                + INSTALL_JAVA
            )
        java = found
    major = java_major(java)
    if major is not None and major < JAVA_MAJOR:
        raise EngineError(
            f"the spark engine needs Java {JAVA_MAJOR}, and {java} is Java {major}: " + INSTALL_JAVA
        )
    return java


def java_major(java: str) -> int | None:
    """The major version ``java -version`` reports (8 for 1.8), None when it says none."""
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineError(f"the spark engine cannot run {java}: {exc}; " + INSTALL_JAVA) from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def _log_config() -> str:
    """A quiet log4j2 configuration file for a local driver (written once per content)."""
    digest = hashlib.sha256(_LOG4J2.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"churnops-spark-log4j2-{digest}.properties"
    if not path.exists():
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(_LOG4J2)
        partial.replace(path)
    return str(path)


def defaults(master: str) -> dict[str, str]:
    """The Spark settings churnops starts from (CHURNOPS_SPARK_CONF overrides any of them)."""
    conf = {
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # NB: the prediction store is UTC, and its readers (pyarrow, DuckDB) want microsecond
        # timestamps, not Spark's legacy INT96.
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }
    cores = local_cores(master)
    if cores is not None:
        conf |= {
            # NB: on one machine the UI is a port nobody looks at, and 200 shuffle partitions
            # are 200 tiny tasks.
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": str(2 * cores),
            # NB: the driver's ports stay on loopback.
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.host": "127.0.0.1",
            "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{_log_config()}",
        }
    return conf


def check(settings: Settings) -> dict[str, str]:
    """Whether a session can start, without starting one (no JVM): pyspark importable, the
    master and extra settings well-formed, Java 17 there. The settings the session would get;
    EngineError naming the fix otherwise."""
    try:
        import pyspark.sql  # noqa: F401
    except ImportError:
        raise EngineError(INSTALL_PYSPARK) from None
    master = settings.spark_master.strip()
    check_master(master)
    conf = defaults(master) | parse_conf(settings.spark_conf)
    java_command()
    return conf


def session(settings: Settings) -> SparkSession:
    """The SparkSession for ``settings`` (the running one if this process has one already);
    EngineError naming the fix when pyspark, Java or the master is missing or wrong."""
    conf = check(settings)
    # NB: pyspark 4.3 warns at start and on every Arrow/pandas function that it "does not yet
    # fully support pandas >= 3"; churnops' Spark paths exchange Arrow batches, tested here.
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    master = settings.spark_master.strip()
    if local_cores(master) is not None:
        # NB: pyspark starts its Python workers with PYSPARK_PYTHON (default: python3 on PATH,
        # which need not have churnops); on one machine they must run this interpreter.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master).appName(APP_NAME)
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # noqa: BLE001 - py4j and the JVM raise many kinds; one line out
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(
            f"Spark did not start with CHURNOPS_SPARK_MASTER={master!r}: {first[:300]}"
        ) from None
    spark.sparkContext.setLogLevel("ERROR")
    # NB: py4j logs every connection it closes at INFO, which churnops' INFO log would show.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    return spark
