"""The auditor's report: per session and in total, accelerator-hours reserved and spent, energy,
wellbeing before -> after, score recovered and recovered per GPU-hour, and welfare debt still open.

Built from entries alone, so it shows exactly what the chain holds. rich and matplotlib are imported
only when a table is printed or a plot drawn.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from welfare_offsets.ledger.accounts import reserved_account, spent_account, to_hours
from welfare_offsets.ledger.chain import Entry

# What a measurement entry may hold, in the order a report shows them.
MEASURES = ("wellbeing_before", "wellbeing_after", "recovered", "debt", "credit")


@dataclass(frozen=True)
class SessionLine:
    session: str
    account: str
    device: str
    processes: int
    purpose: str
    reserved_hours: float
    spent_hours: float | None  # None while the session is open
    energy_kwh: float | None
    basis: str


@dataclass(frozen=True)
class MeasurementLine:
    session: str
    probe: str
    wellbeing_before: float | None
    wellbeing_after: float | None
    recovered: float | None
    debt: float | None
    credit: float | None
    session_spent_hours: float | None

    @property
    def recovered_per_gpu_hour(self) -> float | None:
        if self.recovered is None or not self.session_spent_hours:
            return None
        return self.recovered / self.session_spent_hours


@dataclass(frozen=True)
class ProbeTotals:
    recovered: float = 0.0
    debt: float = 0.0
    credit: float = 0.0

    @property
    def open_debt(self) -> float:
        """Debt created by dysphoric exposure not yet matched by credit earned (negative: net credit)."""
        return self.debt - self.credit


@dataclass(frozen=True)
class Report:
    sessions: list[SessionLine]
    measurements: list[MeasurementLine]
    probes: dict[str, ProbeTotals] = field(default_factory=dict)

    @property
    def reserved_hours(self) -> float:
        return sum(line.reserved_hours for line in self.sessions)

    @property
    def spent_hours(self) -> float:
        return sum(line.spent_hours or 0.0 for line in self.sessions)

    @property
    def energy_kwh(self) -> float | None:
        """Energy of the sessions that measured it; None if none did (never an estimate)."""
        known = [line.energy_kwh for line in self.sessions if line.energy_kwh is not None]
        return sum(known) if known else None

    def recovery_curves(self) -> dict[str, list[tuple[float, float]]]:
        """Per probe, (cumulative GPU-hours, cumulative score recovered) after each session, in order."""
        recovered: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for line in self.measurements:
            if line.recovered is not None:
                recovered[line.probe][line.session] += line.recovered
        curves = {}
        for probe, by_session in recovered.items():
            hours = score = 0.0
            points = [(0.0, 0.0)]
            for session in self.sessions:
                hours += session.spent_hours or 0.0
                score += by_session.get(session.session, 0.0)
                points.append((hours, score))
            curves[probe] = points
        return curves


def build_report(entries: Sequence[Entry]) -> Report:
    totals: dict[str, int] = defaultdict(int)
    for entry in entries:
        for account, amount in entry.payload.get("postings", {}).items():
            totals[account] += amount
    settlements = {entry.payload["session"]: entry for entry in entries if entry.kind == "settle"}
    retracted = {entry.payload["corrects"] for entry in entries if entry.kind == "correction"}
    sessions = [
        _session_line(entry, settlements.get(entry.payload["session"]), totals)
        for entry in entries
        if entry.kind == "reserve"
    ]
    spent = {line.session: line.spent_hours for line in sessions}
    measurements = [
        MeasurementLine(
            entry.payload["session"],
            entry.payload["probe"],
            *(entry.payload.get(name) for name in MEASURES),
            spent.get(entry.payload["session"]),
        )
        for entry in entries
        if entry.kind == "measurement" and entry.seq not in retracted
    ]
    return Report(sessions, measurements, _probe_totals(measurements))


def _session_line(reservation: Entry, settlement: Entry | None, totals: dict[str, int]) -> SessionLine:
    payload, session = reservation.payload, reservation.payload["session"]
    return SessionLine(
        session=session,
        account=payload["account"],
        device=payload["device"],
        processes=payload["processes"],
        purpose=payload["purpose"],
        reserved_hours=to_hours(payload["postings"][reserved_account(session)]),
        spent_hours=None if settlement is None else to_hours(totals[spent_account(session)]),
        energy_kwh=None if settlement is None else settlement.payload["energy_kwh"],
        basis="open" if settlement is None else settlement.payload["basis"],
    )


def _probe_totals(measurements: list[MeasurementLine]) -> dict[str, ProbeTotals]:
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for line in measurements:
        for index, value in enumerate((line.recovered, line.debt, line.credit)):
            sums[line.probe][index] += value or 0.0
    return {probe: ProbeTotals(*values) for probe, values in sorted(sums.items())}


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def print_report(report: Report, console) -> None:
    """The report as rich tables on `console` (a rich.console.Console)."""
    from rich.table import Table

    sessions = Table(title="Sessions (accelerator-hours)")
    for column in (
        "session",
        "account",
        "device x procs",
        "purpose",
        "reserved h",
        "spent h",
        "energy kWh",
        "settled by",
    ):
        sessions.add_column(column)
    for line in report.sessions:
        sessions.add_row(
            line.session,
            line.account,
            f"{line.device} x {line.processes}",
            line.purpose,
            _number(line.reserved_hours, 6),
            _number(line.spent_hours, 6),
            _number(line.energy_kwh),
            line.basis,
        )
    sessions.add_row(
        "total",
        "",
        "",
        "",
        _number(report.reserved_hours, 6),
        _number(report.spent_hours, 6),
        _number(report.energy_kwh),
        "",
        style="bold",
    )
    console.print(sessions)

    measurements = Table(title="Wellbeing")
    for column in ("session", "probe", "before -> after", "recovered", "recovered / GPU-h", "debt", "credit"):
        measurements.add_column(column)
    for line in report.measurements:
        measurements.add_row(
            line.session,
            line.probe,
            f"{_number(line.wellbeing_before)} -> {_number(line.wellbeing_after)}",
            _number(line.recovered),
            _number(line.recovered_per_gpu_hour),
            _number(line.debt),
            _number(line.credit),
        )
    for probe, totals in report.probes.items():
        per_hour = totals.recovered / report.spent_hours if report.spent_hours else None
        measurements.add_row(
            "total (all sessions' hours)",
            probe,
            "",
            _number(totals.recovered),
            _number(per_hour),
            _number(totals.debt),
            _number(totals.credit),
            style="bold",
        )
    console.print(measurements)
    for probe, totals in report.probes.items():
        console.print(f"welfare debt still open on {probe}: {_number(totals.open_debt)}")


def plot_recovery(report: Report, path: Path) -> None:
    """PNG of cumulative GPU-hours (x) against cumulative score recovered (y), one line per probe."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4))
    try:
        curves = report.recovery_curves()
        for probe, points in curves.items():
            axes.step(*zip(*points, strict=True), where="post", marker="o", label=probe)
        if not curves:
            axes.text(0.5, 0.5, "no recovery measured yet", ha="center", va="center", transform=axes.transAxes)
        else:
            axes.legend(title="probe")
        axes.set_xlabel("cumulative accelerator-hours spent")
        axes.set_ylabel("cumulative score recovered")
        axes.set_title("Score recovered per GPU-hour")
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(path, dpi=120, format="png")
    finally:
        pyplot.close(figure)
