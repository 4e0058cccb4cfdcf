"""What a monitor run shows a person: F1 over time (realised and estimated, with the ledger's
promotions and rollbacks marked) and drift per column, as PNG figures, and one HTML page holding
them that opens in the MLflow UI's artifact view. Figures use matplotlib's object API only."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from matplotlib.dates import date2num
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from churnops.monitoring.drift import ColumnDrift
    from churnops.monitoring.findings import MonitorReport, Move, VersionReport, Window


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def series(
    windows: Sequence[Window], key: Literal["realised_f1", "estimated_f1"]
) -> tuple[list[float], list[float]]:
    """(window ends as matplotlib dates, values) of one figure, NaN where a window has none
    and between two windows with no traffic in between, so the line breaks there instead of
    bridging the gap with a segment that reads like data."""
    from datetime import datetime

    ends: list[float] = []
    values: list[float] = []
    for i, w in enumerate(windows):
        if i and w.start != windows[i - 1].end:
            ends.append(float(date2num(datetime.fromisoformat(w.start))))
            values.append(float("nan"))
        ends.append(float(date2num(datetime.fromisoformat(w.end))))
        value = w.realised_f1 if key == "realised_f1" else w.estimated_f1
        values.append(float("nan") if value is None else float(value))
    return ends, values


def f1_over_time(versions: Sequence[VersionReport], moves: Sequence[Move]) -> bytes:
    """Realised and estimated F1 per window for every version, with ledger moves marked."""
    from datetime import datetime

    figure = Figure(figsize=(9, 4.5), layout="constrained")
    axes = figure.add_subplot()
    kinds: tuple[tuple[Literal["realised_f1", "estimated_f1"], str], ...] = (
        ("realised_f1", "o-"),
        ("estimated_f1", "x--"),
    )
    for version in versions:
        for key, style in kinds:
            ends, points = series(version.windows, key)
            if any(p == p for p in points):
                kind = key.removesuffix("_f1")
                axes.plot(ends, points, style, label=f"v{version.version} {kind}")
        if version.gate_f1 is not None:
            axes.axhline(version.gate_f1, color="grey", linewidth=0.6, linestyle=":")
    span = axes.get_xlim()
    previous = None
    height = 1.0
    for move in moves:
        moment = float(date2num(datetime.fromisoformat(move.time)))
        axes.axvline(moment, color="crimson", linewidth=0.8)
        # NB: moves close together (2% of the axis) get their labels staggered, not stacked.
        close = previous is not None and moment - previous < 0.02 * (span[1] - span[0])
        height = height - 0.3 if close and height > 0.4 else 1.0
        previous = moment
        axes.annotate(
            f"{move.action} v{move.to_version}",
            (moment, height),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            fontsize=7,
        )
    axes.xaxis_date()
    axes.set_ylabel("F1 at the served threshold")
    axes.set_title("Realised vs estimated F1 per window (dotted: the gate's held-out F1)")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7, loc="lower left")
    figure.autofmt_xdate()
    return _png(figure)


def drift_bars(drift: Sequence[ColumnDrift], version: int) -> bytes:
    """Each column's drift statistic against its threshold for one version."""
    judged = [(d, d.statistic) for d in drift if d.statistic is not None]
    figure = Figure(figsize=(7, max(2.5, 0.35 * len(judged) + 1.2)), layout="constrained")
    axes = figure.add_subplot()
    names = [f"{d.column} ({d.test})" for d, _ in judged]
    # NB: p-value tests drift when small; shown as 1 - p so that longer bars mean more drift.
    values = [
        statistic if d.test in ("wasserstein", "jensenshannon") else 1 - statistic
        for d, statistic in judged
    ]
    colours = ["crimson" if d.drifted else "steelblue" for d, _ in judged]
    axes.barh(names, values, color=colours)
    axes.set_xlabel("distance (or 1 - p-value); red: drifted")
    axes.set_title(f"Drift of v{version}'s traffic against its training reference")
    return _png(figure)


def page(report: MonitorReport, images: dict[str, bytes]) -> bytes:
    """One self-contained HTML page: the alerts, advice, per-version table and the figures."""
    rows = []
    for v in report.versions:
        realised = v.realised_f1
        estimated = v.estimated or {}
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(x))}</td>"
                for x in (
                    f"v{v.version}",
                    v.rows,
                    v.labelled,
                    f"{v.coverage:.1%}",
                    _fmt(None if realised is None else realised.value),
                    f"[{_fmt(None if realised is None else realised.low)}, "
                    f"{_fmt(None if realised is None else realised.high)}]",
                    _fmt(estimated.get("f1")),
                    _fmt(v.gate_f1),
                )
            )
            + "</tr>"
        )
    alerts = "".join(f"<li>{html.escape(a.message)}</li>" for a in report.alerts) or (
        "<li>none</li>"
    )
    advice = report.advice
    note = report.horizon.note
    horizon = f"<p><strong>Note:</strong> {html.escape(note)}</p>" if note else ""
    figures = "".join(
        f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(content).decode()}">'
        for name, content in images.items()
    )
    text = f"""<!doctype html><html><head><meta charset="utf-8">
<title>churnops monitor: {html.escape(report.model)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}td,th{{padding:2px 8px;text-align:right}}
</style></head><body>
<h1>{html.escape(report.model)}: monitor report</h1>
<p>{html.escape(report.since or "start")} to {html.escape(report.until)}, windows of
{html.escape(report.window)}; serving v{report.serving_version}; churn horizon
{report.horizon_days} days</p>{horizon}
<h2>Alerts</h2><ul>{alerts}</ul>
<h2>Advice</h2><p>{html.escape(advice.message) if advice else "none"}</p>
<h2>Versions</h2><table><tr><th>version</th><th>rows</th><th>labelled</th><th>coverage</th>
<th>realised F1</th><th>95% interval</th><th>estimated F1</th><th>gate F1</th></tr>
{"".join(rows)}</table>{figures}</body></html>"""
    return text.encode()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
