"""Bugs the simulation found, each kept as the minimal scenario it was shrunk to.

Most were the daemon's; a few were the checker's own, invariants that held but were
reported broken. Every case replays its events under its seed and must keep every
invariant; before the fix of what its entry names, each of them broke one.
"""

from __future__ import annotations

import pytest

from tests.sim.explore import play
from tests.sim.world import Event


def _events(*steps: tuple[str, int, float]) -> list[Event]:
    return [Event(kind, arg, dt) for kind, arg, dt in steps]


CASES = {
    # seed: (what broke, the events)
    4: ("cancelling a deleted session's job polled squeue 8 times in a minute",
        _events(("edit", 146, 20), ("wait", 482, 5), ("create", 221, 1200),
                ("delete", 271, 1200))),
    23: ("a reconnect's squeue came on top of event-driven ones: 7 in a minute",
         _events(("start", 64, 60), ("create", 360, 1), ("edit", 824, 20), ("create", 795, 5),
                 ("drop", 709, 5))),
    27: ("a failing squeue during a controller outage was retried every 10 s on top of "
         "the poll interval",
         _events(("host_key", 954, 1200), ("create", 902, 60), ("login_up", 274, 300),
                 ("move_port", 749, 1), ("controller_down", 892, 300))),
    40: ("after a job was cancelled outside nbtether, editing the file left the session "
         "failed: the record still held the cancelled job",
         _events(("create", 975, 60), ("scancel", 569, 5), ("wait", 772, 60),
                 ("edit", 828, 1200))),
    46: ("a job whose node died while the login node was down stayed `ready` for ever: its "
         "old announcement made it look RUNNING once squeue had forgotten it",
         _events(("browse", 305, 300), ("create", 196, 20), ("create", 749, 60),
                 ("login_down", 309, 20), ("node_fail", 857, 1200), ("login_up", 314, 300))),
    56: ("a session whose file became invalid lost its port to another session, which then "
         "failed with the port 'held by another program'",
         _events(("create", 628, 60), ("create", 32, 300), ("break", 472, 20),
                 ("node_fail", 958, 1200))),
    72: ("a file saved again after its job was cancelled outside nbtether (while the file "
         "was invalid) still ended `failed`",
         _events(("create", 811, 60), ("edit", 676, 300), ("break", 343, 1), ("scancel", 976, 20),
                 ("create", 988, 20), ("create", 251, 1200))),
    1064: ("a session whose file asked for a taken port lost the port it still served to a "
           "third session, which then failed with the port 'held by another program'",
           _events(("controller_down", 752, 1), ("edit", 481, 300), ("create", 440, 5),
                   ("kill", 711, 60), ("edit", 596, 300), ("start", 48, 20), ("drop", 846, 5),
                   ("login_up", 619, 1200), ("create", 342, 60), ("create", 876, 300),
                   ("wait", 48, 5), ("break", 206, 5), ("create", 247, 5),
                   ("controller_up", 373, 20), ("break", 109, 1), ("wait", 891, 300),
                   ("edit", 28, 60), ("wait", 925, 1200))),
    5268: ("the checker counted a stale route across steps that did not check it (the "
           "port was shared for a while), and reported a route fixed long before",
           _events(("create", 851, 1200), ("kill", 294, 20), ("create", 751, 5),
                   ("start", 126, 300), ("controller_down", 643, 60), ("preempt", 528, 1),
                   ("delete", 946, 5))),
    5299: ("a job submitted as the connection dropped stayed unknown to its record for ever "
           "once the file moved to a busy port",
           _events(("create", 564, 60), ("controller_up", 528, 20), ("create", 184, 20),
                   ("edit", 54, 5), ("wait", 782, 20), ("move_port", 363, 1),
                   ("wait", 604, 60), ("delete", 145, 60), ("sleep", 781, 20),
                   ("create", 404, 1200), ("controller_up", 440, 1), ("grab_port", 730, 1),
                   ("node_fail", 495, 20), ("grab_port", 112, 20), ("drop", 993, 1),
                   ("create", 122, 300))),
    6157: ("the checker let a file that conflicts with another session give up the port it "
           "had, where the daemon keeps it for it (an invalid file changes nothing)",
           _events(("create", 697, 300), ("move_port", 913, 60), ("break", 37, 60),
                   ("create", 471, 5), ("kill", 178, 20), ("create", 860, 20),
                   ("start", 463, 20), ("create", 247, 20), ("login_up", 635, 1200))),
    6287: ("the checker missed a record forgotten mid-step (a file deleted and written again "
           "within a second) and took the new session's token for a changed one",
           _events(("wait", 171, 5), ("wait", 159, 300), ("preempt", 977, 300),
                   ("start", 89, 20), ("create", 241, 1), ("scancel", 278, 60),
                   ("edit", 251, 20), ("start", 827, 1), ("create", 870, 60),
                   ("delete", 675, 1), ("create", 477, 300))),
    6542: ("the checker expected a port swap written while the daemon was down to take "
           "effect although one of the two files was then broken: the daemon keeps the port "
           "the broken file's record served",
           _events(("create", 689, 300), ("scancel", 792, 5), ("create", 40, 20),
                   ("wait", 439, 20), ("create", 973, 60), ("kill", 687, 20),
                   ("create", 968, 5), ("break", 724, 1), ("start", 78, 60),
                   ("controller_up", 927, 1200))),
    6917: ("the checker took a save one second after an outside scancel for a retry, though "
           "the daemon could not yet know of the cancel",
           _events(("create", 678, 300), ("scancel", 641, 1), ("touch", 618, 5),
                   ("drop", 116, 1200))),
    7231: ("a deleted session's job was never cancelled once the host key was put right: "
           "the file touched to retry the login was invalid, and only a valid file's save "
           "logged in again",
           _events(("create", 108, 20), ("host_key", 363, 20), ("break", 411, 20),
                   ("host_key", 212, 60), ("delete", 600, 20), ("login_up", 412, 300))),
    7818: ("a save that retried a refused login was taken as the version already planned "
           "on, so a job cancelled outside nbtether before it was not started again",
           _events(("create", 542, 5), ("controller_down", 512, 5), ("delete", 755, 300),
                   ("create", 755, 300), ("scancel", 851, 60), ("host_key", 811, 60),
                   ("controller_up", 744, 1), ("host_key", 256, 1200))),
    7607: ("a deleted session's job stayed after the host key was put right: the file "
           "touched to retry was invalid for its port, so the daemon did not know its cluster",
           _events(("create", 458, 20), ("create", 678, 20), ("create", 25, 5),
                   ("host_key", 375, 20), ("delete", 961, 1), ("host_key", 226, 20),
                   ("use", 601, 60), ("wait", 510, 20), ("move_port", 403, 60))),
    8460: ("a file deleted just after an sbatch whose answer could not be read was forgotten "
           "at once, and the job that sbatch made ran on, unknown to anyone",
           _events(("wait", 854, 20), ("delete", 428, 60), ("start", 342, 300),
                   ("browse", 561, 60), ("wait", 76, 1), ("delete", 294, 20),
                   ("node_fail", 664, 20), ("browse", 119, 5), ("drop", 553, 5),
                   ("create", 229, 1), ("wait", 6, 1200), ("move_port", 916, 1),
                   ("delete", 382, 5), ("login_down", 933, 60), ("login_up", 114, 300))),
    31057: ("the checker wanted a deleted session's job cancelled soon after the host key was "
            "put right with no session file left to touch: the daemon learns of it only at its "
            "next retry of a refused login, up to 10 min later (then it cancels the job)",
            _events(("create", 399, 5), ("create", 687, 5), ("edit", 558, 20),
                    ("host_key", 139, 20), ("delete", 993, 20), ("host_key", 782, 60),
                    ("wait", 50, 300), ("wait", 50, 1200))),
    20256: ("the checker judged an idle stop by the idle_stop of a file written after it, "
            "not by the file the daemon stopped the job under",
            _events(("create", 25, 20), ("start", 70, 60), ("touch", 237, 60),
                    ("use", 857, 5), ("wait", 141, 1200), ("move_port", 448, 20))),
}


@pytest.mark.parametrize("seed", sorted(CASES), ids=[f"seed-{seed}" for seed in sorted(CASES)])
def test_found_bug_stays_fixed(seed: int) -> None:
    """The minimal scenario of a bug the simulation found keeps every invariant now."""
    what, events = CASES[seed]
    outcome = play(seed, events)
    assert outcome.failure is None, f"{what}: {outcome.failure}"
