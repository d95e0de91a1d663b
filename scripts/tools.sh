#!/usr/bin/env bash
# Fetch the outside tools the integration tests and benchmarks use:
#  - swaks and Postfix's smtp-source/smtp-sink, unpacked into .tools/ from
#    Debian's packages (never installed as a running MTA);
#  - Debian's chromium and chromium-driver, for the browser test.
# Tests that need a missing tool skip with a reason, so this script never
# fails the run; it says what it could not get.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .tools

updated=0
apt_update() {
    if [ "$updated" = 0 ]; then
        apt-get update -qq >/dev/null 2>&1 || true
        updated=1
    fi
}

if ! command -v apt-get >/dev/null; then
    echo "scripts/tools.sh: no apt-get here; SMTP tool and browser tests will be skipped" >&2
    exit 0
fi

if [ ! -x .tools/postfix/usr/sbin/smtp-sink ] || [ ! -x .tools/swaks/usr/bin/swaks ]; then
    (
        cd .tools
        apt-get download -qq postfix swaks >/dev/null 2>&1 || {
            apt_update
            apt-get download -qq postfix swaks >/dev/null 2>&1
        } || { echo "scripts/tools.sh: could not download postfix/swaks" >&2; exit 0; }
        dpkg -x postfix_*.deb postfix
        dpkg -x swaks_*.deb swaks
        rm -f ./*.deb
    )
fi

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt_update
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
            || echo "scripts/tools.sh: could not install chromium; the browser test will be skipped" >&2
    else
        echo "scripts/tools.sh: chromium missing and not root; the browser test will be skipped" >&2
    fi
fi
exit 0
