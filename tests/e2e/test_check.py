"""`nbtether check`: preflight against the real mini-cluster, submitting nothing."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, wait_for
from tests.e2e.harness import Daemon, free_port, session_yaml

pytestmark = pytest.mark.e2e

INSTALL_TIMEOUT = 900  # pip installs jupyterlab from PyPI into the test user's home


@pytest.fixture
def testbed(tmp_path: Path, cluster: Cluster) -> Daemon:
    """A testbed config and sessions directory; the daemon itself is never started."""
    wait_for(lambda: cluster.ssh("true", check=False).returncode == 0, timeout=120,
             message="the login node to accept logins")
    return Daemon(tmp_path, cluster)


def rows(output: str) -> dict[str, tuple[str, str]]:
    """`check` output of one session as {check name: (status, rest of the line)}."""
    found = {}
    for line in output.splitlines():
        match = re.match(r"  (OK|FAIL|SKIP)\s+(login|partition|sbatch --test-only|environment"
                         r"|install|jupyter|queue|qsub -w v)\s+(.*)", line)
        if match:
            found[match[2]] = (match[1], match[3])
    return found


def job_names(cluster: Cluster) -> list[str]:
    """Names of the test user's jobs that squeue knows, recently ended ones included."""
    return cluster.ssh("squeue --me -h -t all -o %j").stdout.split()


def test_grid_engine_checks_its_queue_and_asks_qsub_to_verify(
    tmp_path: Path, cluster: Cluster
) -> None:
    """On Grid Engine: login, queue, qsub -w v and environment pass; too many CPUs fail."""
    sge = Daemon(tmp_path, cluster, scheduler="sge")
    sge.drop("good", session_yaml(free_port()))
    sge.drop("huge", session_yaml(free_port()).replace("cpus: 1", "cpus: 64"))
    result = sge.nbtether("check", "good")
    assert result.returncode == 0, result.stdout + result.stderr
    good = rows(result.stdout)
    assert {name: status for name, (status, _) in good.items()} == {
        "login": "OK", "queue": "OK", "qsub -w v": "OK", "environment": "OK"}
    assert good["qsub -w v"][1] == "verification: found suitable queue(s)"
    result = sge.nbtether("check", "huge")
    assert result.returncode == 1, result.stdout + result.stderr
    huge = rows(result.stdout)
    assert huge["qsub -w v"][0] == "FAIL"
    assert 'cannot run in PE "smp" because it only offers' in huge["qsub -w v"][1]


def test_a_good_session_passes_every_check_and_submits_nothing(
    testbed: Daemon, cluster: Cluster
) -> None:
    """A tutorial session passes login, partition, sbatch --test-only and environment; no job."""
    testbed.drop("good", session_yaml(free_port()))
    result = testbed.nbtether("check", "good")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = rows(result.stdout)
    assert {name: status for name, (status, _) in checks.items()} == {
        "login": "OK", "partition": "OK", "sbatch --test-only": "OK", "environment": "OK"}
    assert "host key verified" in checks["login"][1]
    assert re.match(r"would start at \d{4}-\d\d-\d\dT", checks["sbatch --test-only"][1])
    assert re.match(r"jupyter lab \d+\.\d+.* at /home/hpcuser/jupyter_env/bin/jupyter-lab",
                    checks["environment"][1])
    assert "nbtether-check-good" not in job_names(cluster), "--test-only submits nothing"


def test_an_unknown_partition_fails_with_slurms_words(testbed: Daemon) -> None:
    """A partition SLURM does not know fails the partition check and sbatch in SLURM's words."""
    testbed.drop("badpart", session_yaml(free_port()).replace("partition: cpu",
                                                             "partition: nosuchpart"))
    result = testbed.nbtether("check")
    assert result.returncode == 1, result.stdout + result.stderr
    checks = rows(result.stdout)
    assert checks["partition"] == ("FAIL", "Partition nosuchpart not found")
    assert "fix: set resources.partition to one of: cpu, short" in result.stdout
    assert checks["sbatch --test-only"][0] == "FAIL"
    assert "invalid partition specified: nosuchpart" in checks["sbatch --test-only"][1]
    assert checks["login"][0] == checks["environment"][0] == "OK"


def test_a_missing_venv_fails_the_environment_check_with_a_hint(testbed: Daemon) -> None:
    """A venv that does not exist fails the environment check and says how to create it."""
    testbed.drop("novenv", session_yaml(free_port()).replace("~/jupyter_env", "~/no_such_env"))
    result = testbed.nbtether("check", "novenv")
    assert result.returncode == 1, result.stdout + result.stderr
    checks = rows(result.stdout)
    assert checks["environment"] == (
        "FAIL", "no venv at ~/no_such_env (~/no_such_env/bin/activate does not exist)")
    assert "fix: create it with `nbtether check novenv --install`" in result.stdout
    assert checks["sbatch --test-only"][0] == "OK"


@pytest.fixture
def new_venv(cluster: Cluster) -> Iterator[str]:
    """A venv path in the test user's home that does not exist yet; removed afterwards."""
    path = f"check_env_{secrets.token_hex(4)}"
    yield f"~/{path}"
    cluster.ssh(f"rm -rf ~/{path}", check=False, timeout=120)


def test_install_creates_the_venv_and_the_environment_check_passes(
    testbed: Daemon, cluster: Cluster, new_venv: str
) -> None:
    """`--install` makes the declared venv with jupyterlab (pip from PyPI: ~30-60 s), showing
    pip's progress while it runs; the environment check then passes."""
    testbed.drop("fresh", session_yaml(free_port()).replace("~/jupyter_env", new_venv))
    assert testbed.nbtether("check", "fresh").returncode == 1
    process = subprocess.Popen(
        [sys.executable, "-m", "nbtether", "check", "fresh", "--install"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=testbed.env,
    )
    assert process.stderr is not None and process.stdout is not None
    first = process.stderr.readline()
    while first and "install | " not in first:
        first = process.stderr.readline()
    assert "install | " in first and process.poll() is None, "progress comes while pip runs"
    said = first + process.stderr.read()
    stdout = process.stdout.read()
    assert process.wait(timeout=INSTALL_TIMEOUT) == 0, stdout + said
    assert "  install | Collecting jupyterlab" in said.splitlines()
    checks = rows(stdout)
    assert checks["install"] == ("OK", f"created {new_venv} and installed jupyterlab")
    assert checks["environment"][0] == "OK"
    again = testbed.nbtether("check", "fresh")
    assert again.returncode == 0, again.stdout
    assert f"/home/hpcuser/{new_venv[2:]}/bin/jupyter-lab" in rows(again.stdout)["environment"][1]


def test_a_wrong_host_key_fails_with_a_hint_and_never_runs_a_command(
    testbed: Daemon, cluster: Cluster, new_venv: str, tmp_path: Path
) -> None:
    """A known_hosts entry with another key fails login with a hint; nothing runs remotely."""
    key = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)],
                   check=True)
    wrong = tmp_path / "wrong_known_hosts"
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    wrong.write_text(f"[{cluster.host}]:{cluster.port} {kind} {blob}\n")
    testbed.config.write_text(testbed.config.read_text().replace(str(cluster.known_hosts),
                                                               str(wrong)))
    testbed.drop("wary", session_yaml(free_port()).replace("~/jupyter_env", new_venv))
    result = testbed.nbtether("check", "wary", "--install")
    assert result.returncode == 1, result.stdout + result.stderr
    checks = rows(result.stdout)
    assert checks["login"][0] == "FAIL" and "host key" in checks["login"][1]
    assert f"put the verified key for [{cluster.host}]:{cluster.port} into {wrong}" in (
        result.stdout.replace("\n", " "))
    assert {checks[name][0] for name in ("partition", "sbatch --test-only", "environment")} == {
        "SKIP"}
    assert "install" not in checks
    # --install would have created the venv had any command run on the login node.
    assert cluster.ssh(f"test -e {new_venv} && echo exists || echo absent").stdout == "absent\n"
