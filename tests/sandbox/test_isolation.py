"""The isolation arguments and the host-wide slots, without an engine."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tasksynth.config import load_config
from tasksynth.sandbox import SUPERVISOR_CAPS, Limits, Mount, drop_privileges_prefix, isolated_run_args
from tasksynth.sandbox.pool import HostSlots


def flag_values(args, flag):
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_untrusted_containers_get_no_network_no_capabilities_and_limits():
    config = load_config(environ={"TASKSYNTH_DOCKER__MEMORY": "1g", "TASKSYNTH_DOCKER__PIDS_LIMIT": "100"})
    limits = Limits.from_config(config)
    args = isolated_run_args(limits, name="t", labels={"org.tasksynth.role": "oneshot"},
                             mounts=[Mount("/data/in", "/in")])
    assert flag_values(args, "--network") == ["none"] and flag_values(args, "--cap-drop") == ["ALL"]
    assert flag_values(args, "--cap-add") == [] and flag_values(args, "--user") == ["1000:1000"]
    assert "--read-only" in args and "--init" in args
    assert flag_values(args, "--security-opt") == ["no-new-privileges"]
    assert flag_values(args, "--memory") == flag_values(args, "--memory-swap") == ["1g"]
    assert flag_values(args, "--pids-limit") == ["100"]
    assert flag_values(args, "--ulimit") == [f"fsize={limits.file_size_bytes}:{limits.file_size_bytes}",
                                             f"nofile={limits.open_files}:{limits.open_files}"]
    assert flag_values(args, "--tmpfs") == [f"/tmp:rw,nosuid,nodev,size={limits.tmpfs_bytes},mode=1777,exec"]
    assert flag_values(args, "--mount") == ["type=bind,source=/data/in,target=/in,readonly"]
    assert flag_values(args, "--log-driver") == ["none"]  # no copy of the output on the host's disk


def test_a_supervised_container_keeps_only_the_supervisor_capabilities():
    limits = Limits.from_config(load_config(environ={}))
    args = isolated_run_args(limits, name="t", labels={}, supervisor=True)
    assert flag_values(args, "--cap-add") == list(SUPERVISOR_CAPS) == ["SETUID", "SETGID", "SETPCAP"]
    assert flag_values(args, "--user") == ["0:0"]
    with pytest.raises(ValueError):
        isolated_run_args(limits, name="t", labels={}, supervisor=True, user="1000")
    assert drop_privileges_prefix()[:3] == ["setpriv", "--reuid=1000", "--regid=1000"]


def test_bad_limits_and_mounts_are_refused():
    limits = Limits.from_config(load_config(environ={}))
    with pytest.raises(ValueError):
        limits.replace(memory="lots")
    with pytest.raises(ValueError):
        limits.replace(pids=0)
    with pytest.raises(ValueError):
        Mount("/a,b", "/in").args()


def test_host_slots_bound_containers_across_processes(tmp_path):
    slots = HostSlots(tmp_path / "slots", 2)
    first, second = slots.try_acquire(), slots.try_acquire()
    assert first is not None and second is not None and slots.try_acquire() is None
    probe = ("import sys; from tasksynth.sandbox.pool import HostSlots; "
             f"print(HostSlots({str(tmp_path / 'slots')!r}, 2).try_acquire() is not None)")
    other_process = lambda: subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
    assert other_process() == "False"
    HostSlots.release(first)
    assert other_process() == "True"
    HostSlots.release(second)


@pytest.mark.docker
def test_a_supervisor_drops_to_the_run_user_with_nothing_left(sandbox_image, tmp_path):
    from tasksynth.docker.ownership import owner_labels

    limits = Limits.from_config(load_config(environ={}), memory="256m", pids=32)
    name = f"tasksynth-test-drop-{tmp_path.name[-12:]}"
    args = isolated_run_args(limits, name=name, labels=owner_labels(tmp_path, "oneshot"), supervisor=True)
    script = "grep -E '^Cap(Prm|Eff|Bnd):' /proc/self/status; " + " ".join(drop_privileges_prefix()) + \
        " sh -c 'id -u; id -G; grep -E \"^(Cap|NoNewPrivs)\" /proc/self/status; ulimit -f'"
    result = subprocess.run(["docker", "run", "--rm", *args, sandbox_image, "sh", "-c", script],
                            capture_output=True, text=True, timeout=120)
    lines = result.stdout.split("\n")
    assert lines[:3] == ["CapPrm:\t00000000000001c0", "CapEff:\t00000000000001c0", "CapBnd:\t00000000000001c0"]
    assert lines[3:5] == ["1000", "1000"]  # the run user, its own group only
    assert all(line.endswith("0000000000000000") for line in lines[5:10]), lines
    assert lines[10] == "NoNewPrivs:\t1"
    assert int(lines[11]) * 512 == limits.file_size_bytes  # ulimit -f counts 512-byte blocks
