"""The scale-out bed's lost machine (tests/support/scale_out.py): SIGKILL reaches the worker and
every process under it, however deep, and only those."""

from __future__ import annotations

import subprocess
import time

from tests.support.scale_out import Proc, kill_tree, process_tree, wait_gone


def test_kill_tree_kills_every_descendant_and_nothing_else() -> None:
    # A worker (sh) with a flow run (sh) that has a child of its own (sleep), like the process
    # worker's supervisor and engine; a neighbour outside the tree must survive.
    machine = subprocess.Popen(["sh", "-c", 'sh -c "sleep 60; :" & sleep 60; :'], start_new_session=True)
    neighbour = subprocess.Popen(["sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while len(tree := process_tree(machine.pid)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(tree) == 4, tree
        assert tree[0].pid == machine.pid

        killed = kill_tree(machine.pid)
        machine.wait(timeout=5)
        assert {p.pid for p in killed} == {p.pid for p in tree}
        assert wait_gone(killed, 5)
        assert machine.returncode == -9
        assert neighbour.poll() is None
    finally:
        neighbour.kill()
        neighbour.wait()


def test_a_reused_pid_is_not_the_same_process() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    found = Proc.read(proc.pid)
    assert found is not None
    me = found[0]
    assert me.alive()
    assert not Proc(me.pid, me.started + 1).alive()
    proc.kill()
    proc.wait()
    assert not me.alive()
