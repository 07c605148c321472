from setuptools import setup

setup(
    name="graft_tx",
    version="0.1.0",
    description="graft's RAFT leader election for Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=["graft_tx"],
    package_data={"graft_tx": ["py.typed"]},
    install_requires=[
        "Twisted>=23.10",
        "zope.interface>=6.0",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
        ],
        # Pinned so that a new linter release cannot turn main red by itself.
        "lint": [
            "mypy==2.4.1",
            "mypy-zope==1.0.17",
            "ruff==0.17.6",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
    ],
)
