"""Fixtures: the real adaptd server on a free port, and clients for it.

The server binary is $ADAPTD_SERVER_BIN, else build/server/adaptd under the repository root
(without either, the live tests are skipped).
The client package is imported from $PYTHONPATH, else from build/python (what the build makes).
"""

import pathlib
import re
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]

try:
    import adaptd_client  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO_ROOT / "build" / "python"))
    import adaptd_client  # noqa: F401

from adaptd_client import Client  # noqa: E402
from live_server import ServerProcess  # noqa: E402


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("adaptd"))
    yield process
    code = process.stop()
    # SIGTERM is a graceful shutdown: anything else means the server crashed during the tests.
    assert code == 0, f"adaptd exited with {code}\n{process.logs()}"


@pytest.fixture(scope="session")
def client(server):
    with Client(server.target, timeout=60) as c:
        yield c


@pytest.fixture
def model_name(request):
    """A model name unique to the test, valid for the server ([A-Za-z0-9_.-]{1,64})."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[-64:]

