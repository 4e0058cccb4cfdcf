"""What a person sees, in a real browser (Debian's Chromium through Playwright) against a real
tracking server and the real API: the MLflow UI's registry, run and ledger pages, and /docs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from churnops import lifecycle
from tests import ui
from tests.conftest import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ui.Scene]:
    with ui.scene(tmp_path_factory.mktemp("ui")) as built:
        yield built


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = ui.launch(playwright)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    opened = ui.new_page(browser)
    yield opened
    opened.context.close()


def _serving(world: ui.Scene, version: int) -> None:
    wait_for(lambda: world.api.client.get("/ready").json()["model_version"] == version, 30)


def test_the_models_tab_lists_churn_model_with_its_description(page: Page, world: ui.Scene) -> None:
    ui.models_tab(page, world).click()
    page.get_by_text("Customer-churn classifier managed by churnops").wait_for()


def test_the_version_table_shows_production_where_promote_and_then_rollback_put_it(
    page: Page, world: ui.Scene
) -> None:
    current = lifecycle.status(world.settings).production_version
    assert ui.production_row(page, world) == current
    other = 2 if current == 1 else 1
    lifecycle.promote(world.settings, other, reason="browser test", force=True)
    assert ui.production_row(page, world) == other
    _serving(world, other)
    lifecycle.rollback(world.settings, reason="browser test")
    assert ui.production_row(page, world) == current
    _serving(world, current)


def test_a_version_page_tells_its_story_and_how_to_reproduce_it(
    page: Page, world: ui.Scene
) -> None:
    description = ui.version_page(page, world, 2).inner_text()
    section = page.locator("body").inner_text()
    assert "Logistic regression trained by churnops on built-in synthetic data" in description
    assert f"churnops reproduce {world.run_ids[2]}" in section
    assert "Gate: passed" in section


def test_a_run_page_shows_its_parameters_metrics_and_evidence_figures(
    page: Page, world: ui.Scene
) -> None:
    from mlflow.tracking import MlflowClient

    run = MlflowClient(world.mlflow_url).get_run(world.run_ids[1])
    ui.run_page(page, world, 1)
    shown = page.locator("body").inner_text()
    for name in ("seed", "model_type", "threshold", "data_digest"):
        assert name in shown and str(run.data.params[name]) in shown
    assert f"{run.data.metrics['f1']}"[:6] in shown and "roc_auc" in shown
    for figure in ("confusion_matrix.png", "roc_curve.png", "permutation_importance.png"):
        image = ui.evidence_figure(page, world, 1, figure)
        assert image.evaluate("img => img.naturalWidth") > 200


def test_the_ledger_experiment_lists_every_move_that_history_reports(
    page: Page, world: ui.Scene
) -> None:
    entries = lifecycle.history(world.settings)
    shown = ui.ledger_runs(page, world)
    expected = [
        f"#{e.seq} {e.action} {'v' + str(e.from_version) if e.from_version else 'none'} -> "
        f"v{e.to_version}"
        for e in entries
    ]
    assert shown[: len(expected)] == expected
    assert shown[-1] == "#0 ledger opened"


def test_the_api_docs_list_the_serving_fields_and_try_it_out_predicts_with_the_token(
    page: Page, world: ui.Scene
) -> None:
    offered, answer = ui.try_prediction(page, world)
    served = world.api.client.get("/model", headers={"Authorization": f"Bearer {world.token}"})
    assert set(offered) == set(served.json()["inputs"])
    assert answer["prediction"] in (0, 1) and 0 <= answer["probability"] <= 1
    assert answer["model_version"] == lifecycle.status(world.settings).production_version
