"""What /ready and /model report about a worker: the version it serves, the alias it follows,
the challenger slot, the shadow's counts and the store writer's state.
"""

from __future__ import annotations

import os

from churnops.errors import WorkersNotReadyError
from churnops.serving.flow import ScoringFlow
from churnops.serving.schemas import ChallengerState, ModelResponse, StoreState


def ready_answer(flow: ScoringFlow) -> dict[str, object]:
    """/ready's body: the version serving and, with the store on, its writer's state; a 503
    until every worker of this server serves a model."""
    served = flow.serving()
    # NB: whichever worker takes the probe's connection answers it; one that is ready must not
    # speak for another still loading, whose next /predict would fail.
    loaded = flow.metrics.workers_serving()
    if loaded is not None and loaded < flow.settings.workers:
        raise WorkersNotReadyError(
            f"{loaded} of {flow.settings.workers} workers serve a model; the others are still "
            "loading it"
        )
    answer: dict[str, object] = {
        "status": "ready",
        "model_version": served.version,
        "stale": served.stale,
    }
    if flow.store is not None:
        # NB: still ready (answers are right) while the store fails: the figures say so.
        state = flow.store.state()
        answer["store"] = {
            "unwritten_rows": state.unwritten_rows,
            "dropped_rows": state.dropped_rows,
            "failing": state.failing,
        }
    return answer


def model_answer(flow: ScoringFlow) -> ModelResponse:
    """/model's body: what this worker serves, follows and has stored."""
    settings, watcher, served, store = flow.settings, flow.watcher, flow.watcher.current, flow.store
    return ModelResponse(
        name=settings.model_name,
        alias=settings.alias,
        version=served.version if served else None,
        run_id=served.run_id if served else None,
        loaded_at=served.loaded_at if served else None,
        metrics=served.metrics if served else {},
        inference=served.engine.kind if served else None,
        threshold=served.engine.threshold if served else None,
        inputs=[f.name for f in served.schema.fields] if served else [],
        alias_version=watcher.wanted_version,
        registry_reachable=watcher.registry_reachable,
        last_error=watcher.last_error,
        verified=served.verified if served else None,
        stale=served.stale if served else False,
        worker_pid=os.getpid(),
        challenger=challenger_state(flow),
        store=StoreState.model_validate(store.state().to_dict()) if store is not None else None,
    )


def challenger_state(flow: ScoringFlow) -> ChallengerState | None:
    """/model's challenger part: the slot, its loaded version and the shadow's counts."""
    found, route, shadow = flow.challenger.slot, flow.challenger, flow.shadow
    if found is None:
        return None
    loaded, production = route.watcher.current, flow.watcher.current
    return ChallengerState(
        alias=flow.settings.challenger_alias,
        version=found.version,
        mode=found.mode,
        percent=found.percent,
        loaded_version=loaded.version if loaded else None,
        active=production is not None and route.now(production) is not None,
        last_error=route.watcher.last_error,
        shadow_queued_rows=shadow.queued() if shadow is not None else 0,
        shadow_scored_rows=shadow.scored_rows if shadow is not None else 0,
        shadow_dropped_rows=shadow.dropped_rows if shadow is not None else 0,
    )
