"""A broad MLflow client script for the differential test of `churnops server` against plain
`mlflow server`: experiments, runs, metrics, artifacts (up to 20 MB), datasets, logged models,
the registry, traces, prompts, webhooks, the UI's endpoints and the errors clients rely on.

`python -m tests.parity URL FOLDER` runs every operation against one server, in a process of its
own (MLflow's client keeps global state), and writes FOLDER/observed.json: per operation, what a
client observed, with the server's own ids, times and addresses replaced by placeholders, so two
servers' answers compare with ==. Webhook deliveries go to a receiver in that process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

BIG_ARTIFACT_BYTES = 20 * 1024 * 1024
WEBHOOK_SECRET = "parity-" + "s" * 24


@dataclass
class Receiver:
    """A loopback HTTP endpoint that records the webhook deliveries it gets."""

    server: ThreadingHTTPServer
    deliveries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_receiver() -> Receiver:
    deliveries: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
            deliveries.append({"headers": dict(self.headers.items()), "body": body})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Receiver(server, deliveries)


def signature_valid(delivery: dict[str, Any], secret: str) -> bool:
    """Whether a delivery carries MLflow's HMAC signature made with ``secret``."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    headers = {k.lower(): v for k, v in delivery["headers"].items()}
    expected = _generate_hmac_signature(
        secret,
        headers.get("x-mlflow-delivery-id", ""),
        headers.get("x-mlflow-timestamp", ""),
        delivery["body"],
    )
    return headers.get("x-mlflow-signature") == expected


_ID = re.compile(r"\b(?:m-)?[0-9a-f]{32}\b|\btr-[0-9a-f]{32}\b|\bwh-[0-9a-f]{32}\b")
_PORT = re.compile(r"127\.0\.0\.1:\d+")


def _normal(value: Any, folder: Path) -> Any:
    """``value`` with ids, loopback ports, times and the run's folder replaced by placeholders."""
    if isinstance(value, dict):
        return {
            k: "<time>" if re.search(r"time|timestamp|_at$", k) and v else _normal(v, folder)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_normal(v, folder) for v in value]
    if isinstance(value, str):
        text = value.replace(str(folder), "<folder>")
        return _PORT.sub("127.0.0.1:<port>", _ID.sub("<id>", text))
    return value


def _outcome(step: Callable[[], Any], folder: Path) -> Any:
    try:
        return {"ok": _normal(step(), folder)}
    except Exception as exc:  # noqa: BLE001 - the error a client sees is the observation
        code = getattr(exc, "error_code", None)
        return {"error": type(exc).__name__, "code": code}


def exercise(url: str, folder: Path, receiver: Receiver) -> dict[str, Any]:
    """Run every operation against the server at ``url``; what each observed, normalised."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    client = MlflowClient(url, registry_uri=url)
    observed: dict[str, Any] = {}
    state: dict[str, Any] = {}

    def op(name: str) -> Callable[[Callable[[], Any]], None]:
        def record(step: Callable[[], Any]) -> None:
            observed[name] = _outcome(step, folder)

        return record

    for name, step in _steps(client, mlflow, url, folder, receiver, state):
        op(name)(step)
    return observed


def _steps(
    client: Any, mlflow: Any, url: str, folder: Path, receiver: Receiver, state: dict[str, Any]
) -> Iterator[tuple[str, Callable[[], Any]]]:
    from mlflow.entities import Metric, Param, RunTag

    # NB: fixed names: each server is a fresh one, and the names are part of what is compared.
    tag = "p1"
    experiment = f"parity-{tag}"

    def create_experiment() -> Any:
        state["eid"] = client.create_experiment(experiment, tags={"team": "churn"})
        return "created"

    yield "experiment: create", create_experiment
    yield (
        "experiment: get by name",
        lambda: client.get_experiment_by_name(experiment).tags,
    )
    yield "experiment: set tag", lambda: client.set_experiment_tag(state["eid"], "stage", "dev")
    yield (
        "experiment: search",
        lambda: [e.name for e in client.search_experiments(filter_string=f"name = '{experiment}'")],
    )
    yield "experiment: duplicate name", lambda: client.create_experiment(experiment)
    yield "experiment: missing", lambda: client.get_experiment("987654321")

    def create_run() -> Any:
        run = client.create_run(state["eid"], tags={"purpose": "parity"}, run_name="first")
        state["rid"] = run.info.run_id
        return {"status": run.info.status, "name": run.info.run_name}

    yield "run: create", create_run
    yield "run: log param", lambda: client.log_param(state["rid"], "alpha", "0.5")
    yield "run: param is write-once", lambda: client.log_param(state["rid"], "alpha", "0.7")
    yield (
        "run: log metric steps",
        lambda: [client.log_metric(state["rid"], "loss", 1.0 / (s + 1), step=s) for s in range(5)],
    )
    yield (
        "run: log batch",
        lambda: client.log_batch(
            state["rid"],
            metrics=[Metric("acc", 0.9, 0, 1)],
            params=[Param("beta", "2")],
            tags=[RunTag("owner", "parity")],
        ),
    )
    yield (
        "run: metric history",
        lambda: [(m.step, m.value) for m in client.get_metric_history(state["rid"], "loss")],
    )
    yield (
        "run: get",
        lambda: {
            "params": client.get_run(state["rid"]).data.params,
            "metrics": client.get_run(state["rid"]).data.metrics,
            "tags": {
                k: v
                for k, v in client.get_run(state["rid"]).data.tags.items()
                if k != "mlflow.user"
            },
        },
    )
    yield (
        "run: search with filter",
        lambda: [
            r.info.run_name
            for r in client.search_runs([state["eid"]], filter_string="params.alpha = '0.5'")
        ],
    )
    yield (
        "run: search ordered",
        lambda: [
            r.data.metrics.get("acc")
            for r in client.search_runs([state["eid"]], order_by=["metrics.acc DESC"])
        ],
    )
    yield "run: missing", lambda: client.get_run("0" * 32)
    yield "run: history of a missing metric", lambda: client.get_metric_history(state["rid"], "x")

    def artifacts() -> Any:
        small = folder / "notes.txt"
        small.write_text("churn notes\n")
        client.log_artifact(state["rid"], str(small), "docs")
        client.log_text(state["rid"], "hello", "docs/hello.txt")
        client.log_dict(state["rid"], {"a": 1}, "docs/config.json")
        return sorted(
            (a.path, a.is_dir, a.file_size) for a in client.list_artifacts(state["rid"], "docs")
        )

    yield "artifacts: small files", artifacts

    def big_artifact() -> Any:
        big = folder / "big.bin"
        big.write_bytes(np.random.default_rng(7).bytes(BIG_ARTIFACT_BYTES))
        client.log_artifact(state["rid"], str(big), "blobs")
        back = Path(client.download_artifacts(state["rid"], "blobs/big.bin", str(folder / "dl")))
        return (
            hashlib.sha256(back.read_bytes()).hexdigest()
            == hashlib.sha256(big.read_bytes()).hexdigest()
        )

    yield "artifacts: 20 MB round trip", big_artifact
    yield (
        "artifacts: missing file",
        lambda: client.download_artifacts(state["rid"], "docs/none.txt", str(folder / "dl2")),
    )
    yield (
        "artifacts: list root",
        lambda: sorted(a.path for a in client.list_artifacts(state["rid"])),
    )

    def dataset() -> Any:
        from mlflow.data.pandas_dataset import from_pandas

        frame = pd.DataFrame({"x": [1, 2, 3], "churn": [0, 1, 0]})
        with mlflow.start_run(run_id=state["rid"]):
            mlflow.log_input(from_pandas(frame, name="tiny", targets="churn"), context="training")
        found = client.get_run(state["rid"]).inputs.dataset_inputs
        return [(d.dataset.name, d.dataset.digest, [t.value for t in d.tags]) for d in found]

    yield "dataset: log input", dataset

    def logged_model() -> Any:
        import mlflow.sklearn
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
        with mlflow.start_run(run_id=state["rid"]):
            info = mlflow.sklearn.log_model(
                model, name="model", serialization_format="skops", skops_trusted_types=[]
            )
        state["model_uri"] = info.model_uri
        loaded = mlflow.pyfunc.load_model(info.model_uri)
        return loaded.predict(pd.DataFrame({"x": [0.0, 3.0]})).tolist()

    yield "model: log and load", logged_model
    yield (
        "model: search logged models",
        lambda: [
            m.name
            for m in mlflow.search_logged_models(
                experiment_ids=[state["eid"]], output_format="list"
            )
        ],
    )
    model_name = f"parity_model_{tag}"

    def register() -> Any:
        client.create_registered_model(model_name, tags={"kind": "churn"}, description="d")
        mv = mlflow.register_model(state["model_uri"], model_name)
        state["mv"] = mv.version
        return {"version": mv.version, "status": mv.status}

    yield "registry: create model and version", register
    yield (
        "registry: set alias",
        lambda: client.set_registered_model_alias(model_name, "production", "1"),
    )
    yield (
        "registry: get by alias",
        lambda: client.get_model_version_by_alias(model_name, "production").version,
    )
    yield (
        "registry: version tag",
        lambda: client.set_model_version_tag(model_name, "1", "gate", "pass"),
    )
    yield (
        "registry: update description",
        lambda: client.update_model_version(model_name, "1", description="first").description,
    )
    yield (
        "registry: search versions",
        lambda: [
            (v.version, v.tags, v.aliases)
            for v in client.search_model_versions(f"name = '{model_name}'")
        ],
    )
    yield (
        "registry: load by alias",
        lambda: (
            mlflow.pyfunc.load_model(f"models:/{model_name}@production")
            .predict(pd.DataFrame({"x": [3.0]}))
            .tolist()
        ),
    )
    yield "registry: missing alias", lambda: client.get_model_version_by_alias(model_name, "none")
    yield (
        "registry: delete alias",
        lambda: client.delete_registered_model_alias(model_name, "production"),
    )
    yield (
        "registry: rename",
        lambda: (
            client.rename_registered_model(model_name, model_name + "_r"),
            client.get_registered_model(model_name + "_r").tags,
        ),
    )
    yield "registry: missing model", lambda: client.get_registered_model("no_such_model_" + tag)

    def traces() -> Any:
        mlflow.set_experiment(experiment_id=state["eid"])
        with mlflow.start_span(name="score") as span:
            span.set_inputs({"customer": 1})
            with mlflow.start_span(name="features"):
                pass
            span.set_outputs({"churn": 0.2})
        mlflow.flush_trace_async_logging() if hasattr(mlflow, "flush_trace_async_logging") else None
        found = mlflow.search_traces(experiment_ids=[state["eid"]], return_type="list")
        return sorted(s.name for t in found for s in t.data.spans)

    yield "traces: log and search", traces

    def prompts() -> Any:
        name = f"parity_prompt_{tag}"
        mlflow.genai.register_prompt(name=name, template="Will {{customer}} churn?")
        mlflow.genai.register_prompt(name=name, template="Will {{customer}} leave?")
        mlflow.genai.set_prompt_alias(name, "live", 1)
        return [
            mlflow.genai.load_prompt(f"prompts:/{name}/2").template,
            mlflow.genai.load_prompt(f"prompts:/{name}@live").template,
        ]

    yield "prompts: register, alias, load", prompts

    def webhooks() -> Any:
        hook = client.create_webhook(
            name=f"parity-{tag}",
            url=receiver.url,
            events=["model_version.created"],
            secret=WEBHOOK_SECRET,
        )
        state["hook"] = hook.webhook_id
        result = client.test_webhook(hook.webhook_id)
        return {"success": result.success, "status": result.response_status}

    yield "webhooks: create and test", webhooks
    yield "webhooks: list", lambda: [w.name.startswith("parity-") for w in client.list_webhooks()]
    yield (
        "webhooks: update",
        lambda: client.update_webhook(state["hook"], description="x").description,
    )
    yield "webhooks: delete", lambda: client.delete_webhook(state["hook"])
    yield (
        "experiment: delete and restore",
        lambda: (
            client.delete_experiment(state["eid"]),
            client.get_experiment(state["eid"]).lifecycle_stage,
            client.restore_experiment(state["eid"]),
            client.get_experiment(state["eid"]).lifecycle_stage,
        ),
    )
    yield (
        "run: delete and restore",
        lambda: (
            client.delete_run(state["rid"]),
            client.get_run(state["rid"]).info.lifecycle_stage,
            client.restore_run(state["rid"]),
            client.get_run(state["rid"]).info.lifecycle_stage,
        ),
    )
    for path in (
        "/",
        "/health",
        "/version",
        "/ajax-api/2.0/mlflow/experiments/search?max_results=5",
        "/ajax-api/2.0/mlflow/registered-models/search?max_results=5",
        "/api/2.0/mlflow/runs/get?run_id=" + "0" * 32,
        "/static-files/favicon.ico",
        "/no/such/page",
    ):
        yield f"http: GET {path}", functools.partial(_http, url, path)


def _http(url: str, path: str) -> Any:
    response = httpx.get(url + path, timeout=30)
    kind = response.headers.get("content-type", "").split(";")[0]
    body: Any = None
    if kind == "application/json":
        body = sorted(json.loads(response.text)) if response.text.startswith("{") else None
    return {"status": response.status_code, "type": kind, "keys": body}


def main() -> None:
    import sys

    url, folder = sys.argv[1], Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    receiver = start_receiver()
    try:
        observed = exercise(url, folder, receiver)
        observed["webhooks: delivery signed with the secret"] = {
            "ok": [signature_valid(d, WEBHOOK_SECRET) for d in receiver.deliveries]
        }
    finally:
        receiver.stop()
    # NB: to a file, since MLflow prints its own lines on stdout.
    (folder / "observed.json").write_text(json.dumps(observed, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
