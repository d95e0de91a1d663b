#!/usr/bin/env bash
# Set up everything the test suite needs on a machine that has only Python 3.11
# and pip, then run the whole suite.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -e '.[test]' --config-settings editable_mode=compat

# Real SMTP peers for the integration tests (swaks; Postfix's smtp-source and
# smtp-sink unpacked into .tools, never installed as a running MTA).
bash scripts/tools.sh

exec .venv/bin/python -m pytest "$@"
