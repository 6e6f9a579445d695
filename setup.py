"""greenzmq: gevent green-thread ZeroMQ services, a Poller broker, hop tracing."""

from setuptools import find_packages, setup

setup(
    name="greenzmq",
    version="0.1.0",
    description="gevent green-thread service framework over pyzmq",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # Only greenzmq is installed at the top level: the tutorial's roles (the
    # repository's services/ folder) go in as greenzmq.services, so a user's
    # own services/ package and `greenzmq greenzmq.services.X:app` both work.
    # greenzmq/services/__init__.py is the stand-in a checkout imports; the
    # wheel takes services/ in its place.
    packages=[
        *find_packages(include=["greenzmq", "greenzmq.*"], exclude=["greenzmq.services"]),
        "greenzmq.services",
    ],
    package_dir={"greenzmq.services": "services"},
    package_data={"greenzmq": ["py.typed"]},
    # orjson: hop events are rendered to bytes at ~3 us instead of ~6.6 us with
    # the stdlib json renderer (see docs/design.md).
    # prometheus_client: --metrics writes the Prometheus text format with the
    # project's own library (families, escaping, histogram rules) instead of a
    # hand-written copy; pure Python, no dependencies, imported by the master
    # only when --metrics is given.
    # msgpack: greenzmq.rpc's default codec (bytes and str kept apart, exact
    # round trips, compact); a C extension with wheels everywhere, no dependencies.
    install_requires=[
        "pyzmq>=25",
        "gevent>=23",
        "structlog>=23",
        "orjson>=3.8",
        "prometheus_client>=0.17",
        "msgpack>=1.0",
    ],
    extras_require={
        # six: majortomo imports it without declaring it; wheel: tests/test_packaging.py
        # builds a wheel offline (--no-build-isolation) with setuptools < 70.1
        "test": [
            "pytest>=7",
            "tox>=4",
            "hypothesis>=6",
            "majortomo>=0.2",
            "six",
            "setproctitle>=1.3",
            "wheel",
            # matplotlib (the plot extra) is not here: it is half of a test
            # environment's install time; tox's py311 adds it (extras = test, plot)
            # and tests the plots there, the others test the one-line refusal
        ],
        "title": ["setproctitle>=1.3"],
        # greenzmq bench --plot PNG, greenzmq trace --plot PNG
        "plot": ["matplotlib>=3.5"],
        # greenzmq bench --only mdp: majortomo's broker, Client and Worker (MDP/0.2)
        "bench": ["majortomo>=0.2", "six"],
    },
    entry_points={
        "console_scripts": ["greenzmq = greenzmq.cli:main"],
        # the fixtures for testing greenzmq services (greenzmq/tools/pytest_plugin.py)
        "pytest11": ["greenzmq = greenzmq.tools.pytest_plugin"],
    },
    classifiers=["Programming Language :: Python :: 3", "Typing :: Typed"],
)
