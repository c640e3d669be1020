#!/usr/bin/env bash
# The whole test run on a fresh machine, as root: install the project with its dev
# extras, bring up the mini-cluster, run the suite, then check the code. Fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --root-user-action=ignore -e '.[dev,local]'
bash tests/cluster/start.sh
# tests/unit/test_service.py verifies the user unit with systemd-analyze.
if ! command -v systemd-analyze >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd
fi
# tests/e2e/test_handover.py drives Debian's Chromium with Playwright (whose own browser
# download needs the internet).
if ! command -v chromium >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium
fi
python3 -m pytest "$@"
ruff check .
mypy --strict daemon
