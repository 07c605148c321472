"""Prometheus metrics of a node, read from it at each scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from graft_tx.cluster import State
from graft_tx.interfaces import ITransportStats
from graft_tx.node import Node

_COUNTERS = (
    ("elections_started", "Elections this node started (terms it campaigned in)."),
    ("elections_won", "Elections this node won."),
    ("votes_granted", "Votes this node granted to candidates."),
    ("heartbeats_sent", "Heartbeats this node sent as leader."),
    ("heartbeats_received", "Heartbeats this node accepted from a leader."),
    ("leader_changes", "Times this node saw a different leader than the one before."),
)


def _transport_counters(stats: ITransportStats) -> list[tuple[str, str, int | None]]:
    """The metrics of a transport's counters: name, help, and value (None
    where the transport has no such counter, and no metric)."""
    return [
        (
            "messages_invalid",
            "Inbound messages, lines or connections the transport dropped as invalid.",
            stats.invalid_messages,
        ),
        (
            "messages_other_protocol",
            "Inbound messages from a node of the other protocol mode (still delivered).",
            stats.other_protocol_messages,
        ),
        (
            "sends_failed",
            "Outgoing messages the transport failed to send.",
            stats.failed_sends,
        ),
        (
            "messages_unsent",
            "Outgoing messages dropped because a peer or the server was not connected.",
            stats.dropped_outgoing,
        ),
        (
            "connections_refused",
            "Inbound connections refused, or dropped mid-handshake to make room.",
            stats.refused_connections,
        ),
    ]


class NodeCollector:
    """A prometheus-client collector for the node that C{source} returns."""

    def __init__(self, source: Callable[[], Node | None], rpc: object = None) -> None:
        self._source = source
        self._stats = ITransportStats(rpc, None)

    def collect(self) -> Iterator[Metric]:
        node = self._source()
        if node is None:
            return
        labels = ["cluster", "node"]
        values = [node.cluster_info.name, node.id]
        state = GaugeMetricFamily(
            "graft_state", "1 for the state this node is in.", labels=[*labels, "state"]
        )
        for each in State:
            state.add_metric([*values, str(each)], 1.0 if node.state is each else 0.0)
        yield state
        leader = GaugeMetricFamily(
            "graft_is_leader",
            "1 while this node leads (with a lease in graft-tx mode).",
            labels=labels,
        )
        leader.add_metric(values, 1.0 if node.is_leader() else 0.0)
        yield leader
        term = GaugeMetricFamily("graft_term", "This node's current term.", labels=labels)
        term.add_metric(values, float(node.current_term))
        yield term
        stats = node.stats()
        for name, text in _COUNTERS:
            counter = CounterMetricFamily(f"graft_{name}", text, labels=labels)
            counter.add_metric(values, float(getattr(stats, name)))
            yield counter
        if self._stats is None:
            return
        for name, text, value in _transport_counters(self._stats):
            if value is not None:
                counter = CounterMetricFamily(f"graft_{name}", text, labels=labels)
                counter.add_metric(values, float(value))
                yield counter


def node_registry(source: Callable[[], Node | None], rpc: object = None) -> CollectorRegistry:
    """A registry holding only this node's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(source, rpc))
    return registry
