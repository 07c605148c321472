"""Real nats-server processes for tests (the helpers live in graft_tx.local)."""

from graft_tx.local import NatsServer, cluster_args, free_port, nats_server_binary, wait_for_port

__all__ = ["NatsServer", "cluster_args", "free_port", "nats_server_binary", "wait_for_port"]
