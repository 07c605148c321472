"""Transports: IRpc providers that carry a node's messages to its peers."""
