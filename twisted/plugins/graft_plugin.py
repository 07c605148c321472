from twisted.application.service import ServiceMaker

graft = ServiceMaker(
    "graft",
    "graft_tx.tap",
    "One node of a leader election: graft's half of RAFT, over NATS or TCP.",
    "graft",
)
