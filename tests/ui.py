"""What a person sees, driven in Debian's Chromium through Playwright: the pages of the MLflow UI
and the API's /docs that the browser tests check and `make screenshots` photographs.

Both build the same scene: a fresh tracking server (the code `churnops server` runs) holding
`churn_model` v1 and v2 from fixed seeds, and the prediction API with a bearer token.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Locator, Page, Playwright, ViewportSize, expect

from churnops import lifecycle, tracking_server
from churnops.config import Settings
from tests.conftest import ApiProcess, free_port, start_api, stop_api, wait_for

CHROMIUM = "/usr/bin/chromium"
# NB: this machine has no route out; without these flags Chromium keeps dialling Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WINDOW: ViewportSize = {"width": 1280, "height": 800}
# NB: the MLflow UI opens a promotion dialog and its assistant panel on a first visit, and starts
# in its GenAI mode; these are the choices a person makes once, stored where the UI keeps them.
MLFLOW_UI_CHOICES = """
localStorage.setItem('_mlflow_model_registry_promo_modal_dismissed_v1', 'true');
localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
localStorage.setItem('mlflow.workflowType_v1', '"machine_learning"');
"""
MODEL = "churn_model"
SEEDS = (1, 2)
# The UI waits for data it polls for; a cold server answers its first pages slowly.
UI_TIMEOUT_MS = 30_000


@dataclass
class Scene:
    """A tracking server with two versions and the API in front of it."""

    settings: Settings
    api: ApiProcess
    token: str
    run_ids: dict[int, str]

    @property
    def mlflow_url(self) -> str:
        return self.settings.tracking_uri

    def experiment_id(self, name: str) -> str:
        found = httpx.get(
            f"{self.mlflow_url}/api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": name},
        )
        return str(found.json()["experiment"]["experiment_id"])


@contextlib.contextmanager
def scene(folder: Path) -> Iterator[Scene]:
    """Start the servers, train v1 and v2 and promote v1; stop everything afterwards."""
    settings = Settings(data_dir=folder, model_name=MODEL)
    server = tracking_server.start(settings, port=free_port(), quiet=True)
    api = None
    try:
        settings = settings.model_copy(update={"tracking_uri": server.url})
        run_ids = {}
        for seed in SEEDS:
            report = lifecycle.train(
                settings, data_file=None, version_label=None, seed=seed, gate_f1=0.6
            )
            run_ids[report.version] = report.run_id
        lifecycle.promote(settings, 1, reason="first version")
        token = "ui-" + uuid.uuid4().hex
        env = {
            "MLFLOW_TRACKING_URI": server.url,
            "CHURNOPS_MODEL_NAME": MODEL,
            "CHURNOPS_API_TOKEN": token,
            "CHURNOPS_POLL_INTERVAL": "0.2",
        }
        (folder / "api").mkdir()
        api = start_api(env, folder / "api" / "serve.log", "--workers", "1")
        wait_for(lambda: api.client.get("/ready").status_code == 200, timeout=60)
        yield Scene(settings, api, token, run_ids)
    finally:
        if api is not None:
            stop_api(api)
        server.stop()


def launch(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless: no browser download is needed or possible here."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def new_page(browser: Browser) -> Page:
    """A fresh window of the fixed size, with the MLflow UI's first-visit choices made."""
    context = browser.new_context(viewport=WINDOW, device_scale_factor=1)
    context.add_init_script(MLFLOW_UI_CHOICES)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    return page


def _open(page: Page, url: str) -> None:
    """Load ``url`` afresh: the UI's routes live in the URL's fragment, and going to the same
    fragment again re-reads nothing."""
    if page.url.partition("#")[0] == url.partition("#")[0]:
        # NB: the UI does not always follow a change of the fragment alone (the artifact viewer
        # keeps its file), so a new route is a fresh page load.
        page.goto("about:blank")
    page.goto(url)


def models_tab(page: Page, world: Scene) -> Locator:
    """The registry's model list; the link to churn_model in it."""
    _open(page, f"{world.mlflow_url}/#/models")
    link = page.get_by_role("link", name=MODEL, exact=True)
    link.wait_for()
    return link


def version_rows(page: Page, world: Scene) -> dict[int, Locator]:
    """churn_model's version table, one row per version."""
    _open(page, f"{world.mlflow_url}/#/models/{MODEL}")
    rows = {}
    for version in world.run_ids:
        link = page.get_by_role("link", name=f"Version {version}", exact=True)
        link.wait_for()
        rows[version] = page.get_by_role("row").filter(has=link)
    return rows


def production_row(page: Page, world: Scene) -> int:
    """The version whose row carries the alias `production`, as the table shows it."""
    rows = version_rows(page, world)
    # NB: the aliases column fills in after the rows appear.
    page.get_by_role("row").filter(has_text="production").first.wait_for()
    marked = [v for v, row in rows.items() if "production" in row.inner_text()]
    assert len(marked) == 1, f"production shown on versions {marked}"
    return marked[0]


def version_page(page: Page, world: Scene, version: int) -> Locator:
    """A version's page; its description section."""
    _open(page, f"{world.mlflow_url}/#/models/{MODEL}/versions/{version}")
    description = page.get_by_text("trained by churnops on")
    description.wait_for()
    return description


def run_page(page: Page, world: Scene, version: int) -> None:
    """The training run of ``version``, once its parameters and metrics have rendered."""
    experiment = world.experiment_id(world.settings.training_experiment)
    _open(page, f"{world.mlflow_url}/#/experiments/{experiment}/runs/{world.run_ids[version]}")
    page.get_by_text("Parameters (").wait_for()
    page.get_by_text("Metrics (").wait_for()


def evidence_figure(page: Page, world: Scene, version: int, name: str) -> Locator:
    """A figure under evidence/ in the run's artifact viewer; the image element."""
    experiment = world.experiment_id(world.settings.training_experiment)
    run = world.run_ids[version]
    _open(
        page, f"{world.mlflow_url}/#/experiments/{experiment}/runs/{run}/artifacts/evidence/{name}"
    )
    image = page.locator(f"img[alt='evidence/{name}']").first
    image.wait_for()
    expect(image).to_have_js_property("complete", True)
    return image


def ledger_runs(page: Page, world: Scene) -> list[str]:
    """The run names of the ledger experiment as its runs table lists them, newest first."""
    experiment = world.experiment_id(world.settings.ledger_experiment)
    _open(page, f"{world.mlflow_url}/#/experiments/{experiment}/runs")
    page.get_by_text("ledger opened").wait_for()
    return [t.strip() for t in page.get_by_role("link", name="#").all_inner_texts()]


def try_prediction(page: Page, world: Scene) -> tuple[dict, dict]:
    """On the API's /docs: authorize with the token, open POST /predict, "Try it out" with its
    example, "Execute"; the request body the page offered and the response body it shows."""
    page.goto(f"{world.api.url}/docs")
    page.get_by_role("button", name="Authorize").click()
    page.locator(".modal-ux input").fill(world.token)
    page.locator(".modal-ux button.authorize").click()
    page.locator(".modal-ux button.btn-done").click()
    operation = page.locator("#operations-default-predict_one_predict_post")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    offered = json.loads(operation.locator("textarea.body-param__text").input_value())
    operation.get_by_role("button", name="Execute").click()
    body = operation.locator(".live-responses-table .response-col_description pre").first
    body.wait_for()
    status = operation.locator(
        ".live-responses-table tbody .response-col_status"
    ).first.inner_text()
    assert status.strip() == "200", f"Try it out answered {status}: {body.inner_text()}"
    return offered, json.loads(body.inner_text())
