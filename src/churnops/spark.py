"""The Spark session every Spark user in churnops shares (CHURNOPS_SPARK_MASTER/_CONF)."""

from __future__ import annotations

from typing import Any

from churnops.config import Settings
from churnops.errors import EngineError


def session(settings: Settings) -> Any:
    """The process's Spark session, built from the settings on first use."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise EngineError("the spark engine needs pyspark: pip install 'churnops[spark]'") from None
    builder = SparkSession.builder.master(settings.spark_master).appName("churnops")
    builder = builder.config("spark.ui.enabled", "false").config(
        "spark.sql.session.timeZone", "UTC"
    )
    builder = builder.config("spark.sql.shuffle.partitions", "8")
    for pair in filter(None, (p.strip() for p in settings.spark_conf.split(","))):
        key, _, value = pair.partition("=")
        builder = builder.config(key.strip(), value.strip())
    return builder.getOrCreate()
