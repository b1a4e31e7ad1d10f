import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# one version, the package's own (gchat.__version__, shown by --version)
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "gchat" / "__init__.py").read_text(), re.M)

setup(
    name="gchat",
    version=VERSION.group(1) if VERSION else "0",
    description="Cluster chat server: gevent, SQLAlchemy, Redis pub/sub, nginx",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author="the gchat maintainers",
    license="MIT",
    keywords="chat server cluster gevent redis nginx muduo",
    platforms=["Linux"],
    classifiers=[
        "Development Status :: 4 - Beta",
        "Environment :: Console",
        "Environment :: No Input/Output (Daemon)",
        "Intended Audience :: Developers",
        "Intended Audience :: System Administrators",
        "License :: OSI Approved :: MIT License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Topic :: Communications :: Chat",
        "Typing :: Typed",
    ],
    python_requires=">=3.11",
    # The migrations live in alembic/ at the top (where `alembic upgrade head`
    # expects them) and ship inside the package as gchat.migrations, so that a
    # plain `pip install .` brings its own schema.
    packages=find_packages(include=["gchat", "gchat.*"]) + ["gchat.migrations", "gchat.migrations.versions"],
    package_dir={"gchat.migrations": "alembic"},
    # the web app is static files served by the node itself (gchat/web/static)
    package_data={"gchat.migrations": ["script.py.mako"], "gchat.web": ["static/*"], "gchat": ["py.typed"]},
    install_requires=[
        "gevent>=24.2",
        "SQLAlchemy>=2.0",
        "alembic>=1.13",
        "PyMySQL>=1.1",
        "redis>=5.0",
        # argon2id: the slow, salted, memory-hard hash OWASP recommends first
        "argon2-cffi>=23.1",
        # several times faster than json for the encode/decode on every frame
        "orjson>=3.9",
        # keeps incoming messages from garbling the line being typed in gchat-client
        "prompt_toolkit>=3.0",
        # the app's HTTP requests (h11) and the WebSocket handshake and framing (websockets'
        # Sans-I/O layer: bytes in, frames out, like our protocol module; gevent does the I/O)
        "h11>=0.14",
        "websockets>=14",
        # /metrics in Prometheus's format (gchat/metrics.py), and the process's CPU, memory and files
        "prometheus_client>=0.20",
    ],
    extras_require={
        # scripts/plot_bench.py: the figures of docs/benchmarks.md from gchat-bench's JSON
        "plot": ["matplotlib>=3.7"],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            # scripts/test runs the suite on two workers, a module at a time each: its tests
            # mostly wait on real processes (nodes, Redis, nginx, a browser), so one worker
            # left a 2-core machine half idle (docs/testing.md)
            "pytest-xdist>=3.6",
            "hypothesis>=6.100",
            "psutil>=5.9",
            "pexpect>=4.8",
            "ruff>=0.5",
            # scripts/test runs `mypy --strict gchat` (mypy.ini)
            "mypy>=1.10",
            # gevent ships no types; these stubs let mypy check the greenlets, events and servers
            "types-gevent>=24.2",
            # drives Debian's chromium (chromium-driver) in the browser tests; no browser download
            "selenium>=4.20",
            # the raw WebSocket client of the tests: another implementation than the node's
            "wsproto>=1.2",
            # tests/test_tls.py makes a CA and a server certificate at test time
            "cryptography>=41",
        ],
    },
    entry_points={
        "console_scripts": [
            "gchat-server = gchat.__main__:main",
            "gchat-admin = gchat.tools.admin:main",
            "gchat-client = gchat.client.tui:main",
            "gchat-bench = gchat.tools.bench:main",
        ]
    },
)
