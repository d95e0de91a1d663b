#!/usr/bin/env bash
# Fetch the SMTP tools the integration tests and benchmarks use into .tools/:
# swaks (a Perl script) and Postfix's smtp-source/smtp-sink (unpacked from the
# Debian package, not installed).  Tests that need a tool skip with a reason
# when it is missing, so this may fail on a machine without apt.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools
if [ -x .tools/postfix/usr/sbin/smtp-sink ] && [ -x .tools/swaks/usr/bin/swaks ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "scripts/tools.sh: no apt-get here; SMTP tool tests will be skipped" >&2
    exit 0
fi
(
    cd .tools
    if [ -z "$(ls /var/lib/apt/lists 2>/dev/null | grep -v lock)" ] || [ "${EMAILD_APT_UPDATE:-}" = 1 ]; then
        apt-get update -qq >/dev/null 2>&1 || true
    fi
    apt-get download -qq postfix swaks >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null 2>&1 || true
        apt-get download -qq postfix swaks >/dev/null 2>&1
    } || { echo "scripts/tools.sh: could not download postfix/swaks" >&2; exit 0; }
    dpkg -x postfix_*.deb postfix
    dpkg -x swaks_*.deb swaks
    rm -f ./*.deb
)
