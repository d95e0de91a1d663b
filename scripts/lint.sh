#!/usr/bin/env bash
# The linter (ruff: pyflakes, isort, pep8-naming, bugbear) over everything,
# and the type checker (mypy) over the composition root, the service tree
# and every store.  Configuration: pyproject.toml.  CI runs this before the
# tests (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -e '.[test,lint]' --config-settings editable_mode=compat

.venv/bin/ruff check emaild tests bench scripts twisted emaild.tac
.venv/bin/mypy \
    emaild/homeserver.py emaild/service.py emaild/readiness.py emaild/db \
    emaild/web/routing.py \
    emaild/outbound/store.py emaild/people/store.py emaild/links/store.py \
    emaild/groups/store.py emaild/inbound/store.py emaild/notify/store.py \
    emaild/inbound/holds_store.py emaild/digest/store.py emaild/web/sessions.py \
    emaild/outbound/claim_store.py emaild/outbound/enqueue_store.py \
    emaild/people/store_txn.py emaild/people/records.py emaild/people/launches.py \
    emaild/people/lti13_store.py emaild/people/relations.py emaild/groups/relations.py \
    emaild/inbound/relations.py emaild/inbound/records.py emaild/config
