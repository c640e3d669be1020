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
# Exit 5, no test selected (`bash tests/run.sh tests/unit` has no cluster_wide test), is no
# failure; any other non-zero exit is.
pytest_part() {
  python3 -m pytest "$@" && return 0
  local code=$?
  ((code == 5)) || return "$code"
}
# Most tests on two workers: an end-to-end test mostly waits for a walltime, so their waits
# overlap. Tests of one xdist_group share a worker. Then, alone, the tests that change the
# mini-cluster for every job (marker cluster_wide). Both parts run, so a run reports every
# failure; either one failing fails the run. Each part lists its slowest tests, the
# simulation's default run among them (its budget is 60 s).
failed=0
pytest_part -n 2 --dist loadgroup -m "not cluster_wide" --durations=15 "$@" || failed=1
pytest_part -m cluster_wide --durations=15 "$@" || failed=1
ruff check .
mypy --strict daemon
exit "$failed"
