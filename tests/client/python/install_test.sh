#!/bin/bash
# The install commands of client/python/README.md, run as written: a virtual environment that sees
# Debian's packages, the package installed from the build's python folder without any index, and
# then imported from elsewhere with no PYTHONPATH (so the import comes from the installed copy).
set -euo pipefail
python3_bin="$1"
build_python="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python3_bin" -m venv --system-site-packages "$work/venv"
"$work/venv/bin/pip" install --quiet --no-build-isolation --no-index "$build_python"
cd "$work"
env -u PYTHONPATH "$work/venv/bin/python" - <<'PY'
import adaptd_client, adaptd.v1.query_pb2
from adaptd_client import Client
where = adaptd_client.__file__
assert "/venv/" in where, f"adaptd_client imported from {where}, not from the installed copy"
print("installed adaptd_client imports from", where)
PY
