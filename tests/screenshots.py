"""`make screenshots`: photograph the pages the README walks through, from the same scene the
browser tests check (fixed seeds, window size and steps), into docs/img/.

    python -m tests.screenshots [--out docs/img]

Dates, run ids and "n minutes ago" differ from run to run; everything else changes only when the
UI or churnops does.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from churnops import lifecycle
from tests import ui
from tests.conftest import wait_for


def _shoot(page: Page, out: Path, name: str) -> None:
    path = out / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"wrote {path}")  # noqa: T201 - a script's report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as folder,
        ui.scene(Path(folder)) as world,
        sync_playwright() as playwright,
    ):
        browser = ui.launch(playwright)
        page = ui.new_page(browser)
        ui.models_tab(page, world)
        _shoot(page, out, "01-models")
        ui.production_row(page, world)
        _shoot(page, out, "02-versions-v1-in-production")
        ui.version_page(page, world, 1)
        _shoot(page, out, "03-version-page")
        ui.run_page(page, world, 1)
        _shoot(page, out, "04-run-page")
        ui.evidence_figure(page, world, 1, "confusion_matrix.png")
        _shoot(page, out, "05-run-evidence")
        lifecycle.promote(world.settings, 2, reason="v2: the new training")
        assert ui.production_row(page, world) == 2
        _shoot(page, out, "06-versions-after-promote")
        lifecycle.rollback(world.settings, reason="v2 misbehaves in production")
        assert ui.production_row(page, world) == 1
        _shoot(page, out, "07-versions-after-rollback")
        ui.ledger_runs(page, world)
        _shoot(page, out, "08-ledger")
        wait_for(lambda: world.api.client.get("/ready").json()["model_version"] == 1, 30)
        ui.try_prediction(page, world)
        page.locator(".live-responses-table").first.scroll_into_view_if_needed()
        _shoot(page, out, "09-api-docs-try-it-out")
        browser.close()


if __name__ == "__main__":
    main()
