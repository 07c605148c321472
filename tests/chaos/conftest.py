"""The chaos suite: real `twistd graft` processes, real faults.

Kept out of the default run by its marker; run it with
C{python -m pytest tests/chaos -m chaos}. C{GRAFT_CHAOS=short} runs fewer
rounds (CI does). Each test fills a L{ChaosReport}; all of them are printed
at the end of the run, and a test fails on any violation.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from graft_tx.local import LocalCluster, NatsServer

SHORT = os.environ.get("GRAFT_CHAOS", "full") == "short"
_reports: list[ChaosReport] = []


def rounds(full: int, short: int) -> int:
    """How many rounds to run: C{short} under GRAFT_CHAOS=short."""
    return short if SHORT else full


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.chaos)


@dataclass
class ChaosReport:
    """What one chaos test did and found."""

    name: str
    rounds: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    leader_changes: int = 0
    longest_without_leader: float = 0.0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        """A measurement of this test's own, shown in its summary line."""
        self.notes.append(text)

    def fault(self, kind: str) -> None:
        self.faults[kind] += 1

    def leaderless(self, seconds: float) -> None:
        self.longest_without_leader = max(self.longest_without_leader, seconds)

    def violation(self, text: str) -> None:
        self.violations.append(text)

    def summary(self) -> str:
        faults = ", ".join(f"{kind} x{count}" for kind, count in sorted(self.faults.items()))
        verdict = (
            "no violations" if not self.violations else "VIOLATIONS: " + "; ".join(self.violations)
        )
        notes = "".join(f"; {note}" for note in self.notes)
        return (
            f"{self.name}: {self.rounds} rounds; faults: {faults or 'none'}; "
            f"{self.leader_changes} leader changes; longest without a leader "
            f"{self.longest_without_leader * 1000:.0f} ms{notes}; {verdict}"
        )


@pytest.fixture
def chaos_report(request: pytest.FixtureRequest) -> Iterator[ChaosReport]:
    """This test's report; printed in the run's summary, and failing the test on violations."""
    report = ChaosReport(request.node.name)
    _reports.append(report)
    yield report
    assert not report.violations, report.summary()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _reports:
        return
    terminalreporter.section("chaos summary" + (" (GRAFT_CHAOS=short)" if SHORT else ""))
    for report in _reports:
        terminalreporter.write_line(report.summary())


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Start LocalClusters on demand; every node is stopped after the test, whatever happens."""
    clusters: list[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        directory = kwargs.pop("directory", None) or tmp_path / f"cluster{len(clusters) + 1}"
        directory.mkdir(parents=True, exist_ok=True)
        cluster = LocalCluster(directory, **kwargs)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop()


@pytest.fixture
def cluster_over(
    make_cluster: Callable[..., LocalCluster], make_nats: Callable[..., NatsServer]
) -> Callable[..., LocalCluster]:
    """make_cluster over a transport named by the test's parameter; NATS gets its own server."""

    def make(transport: str, **kwargs: Any) -> LocalCluster:
        if transport == "nats":
            kwargs["nats_urls"] = [make_nats().url]
        return make_cluster(transport=transport, **kwargs)

    return make


@pytest.fixture
def make_nats(tmp_path: Path) -> Iterator[Callable[..., NatsServer]]:
    """Start nats-servers on demand; all are stopped after the test."""
    servers: list[NatsServer] = []

    def make(*args: str, port: int | None = None) -> NatsServer:
        server = NatsServer(*args, port=port)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.close()
