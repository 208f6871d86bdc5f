"""The kernel tool on the real engine: a notebook's behaviour (state, errors, images), its limits (a cell
interrupted on timeout, a kernel killed by its memory limit and restarted), its isolation (no network, uid
1000, read-only data) and attempts that do not see each other."""

from __future__ import annotations

import struct
import subprocess

import nbformat
import pytest

pytestmark = pytest.mark.docker


def test_state_is_kept_between_calls_and_the_last_value_is_shown(kernel_pool):
    with kernel_pool.attempt() as kernel:
        first = kernel.python("import pandas as pd\ndf = pd.read_csv('/data/sales/sales.csv')\nprint(len(df))")
        second = kernel.python("(df.units * df.price).groupby(df.region).sum().round(1).to_dict()")
    assert first.status == "ok" and first.text() == "6"
    assert second.status == "ok"
    assert second.text() == "{'east': 40.0, 'north': 55.0, 'south': 48.0}"
    assert second.execution_count == first.execution_count + 1


def test_an_error_shows_its_traceback_and_the_kernel_goes_on(kernel_pool):
    with kernel_pool.attempt() as kernel:
        kernel.python("x = 41")
        failed = kernel.python("def f():\n    return 1 / 0\nf()")
        after = kernel.python("x + 1")
    assert failed.status == "error"
    assert failed.error["ename"] == "ZeroDivisionError"
    assert "return 1 / 0" in failed.text() and "\x1b[" not in failed.text()
    assert after.status == "ok" and after.text() == "42"


def test_a_cell_past_its_time_is_interrupted_and_the_state_survives(kernel_pool):
    with kernel_pool.attempt() as kernel:
        kernel.python("kept = 'yes'")
        slow = kernel.python("import time\nwhile True:\n    time.sleep(0.1)", timeout_s=2)
        after = kernel.python("kept")
    assert slow.status == "timeout" and not slow.restarted
    assert "KeyboardInterrupt" in slow.text() and "interrupted" in slow.note
    assert after.status == "ok" and after.text() == "'yes'"


def test_a_kernel_killed_by_its_memory_limit_is_restarted_and_reported(kernel_pool):
    with kernel_pool.attempt() as kernel:
        kernel.python("kept = 1")
        hog = kernel.python("import numpy as np\nblocks = []\nwhile True:\n"
                            "    blocks.append(np.ones(16 * 1024 * 1024 // 8))")
        after = kernel.python("'kept' in globals()")
        still = kernel.python("2 * 21")
    assert hog.status == "kernel_died" and hog.restarted
    assert "restarted" in hog.note
    assert after.status == "ok" and after.text() == "False"  # a fresh kernel: the state is gone
    assert still.text() == "42"


def test_a_figure_comes_back_as_a_png_and_a_large_one_is_left_out(kernel_pool):
    with kernel_pool.attempt(on_image=lambda png: f"sha-{len(png)}") as kernel:
        plot = kernel.python("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.show()")
        big = kernel.python("import numpy as np\nplt.figure(figsize=(8, 8), dpi=100)\n"
                            "plt.imshow(np.random.default_rng(0).random((800, 800)))\nplt.show()")
    assert plot.status == "ok" and len(plot.images) == 1
    png = plot.images[0]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 100 and height > 100
    assert f"[image sha-{len(png)}]" in kernel.text_of(plot)
    assert big.images == [] and "left out" in big.note


def test_the_code_cannot_reach_the_drivers_channel_and_killing_the_driver_restarts_it(kernel_pool):
    with kernel_pool.attempt() as kernel:
        forged = kernel.python("import os\nopen(f'/proc/{os.getppid()}/fd/1', 'w').write('not json\\n')")
        kernel.python("kept = 1")
        killed = kernel.python("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
        after = kernel.python("('kept' in globals(), 6 * 7)")
    assert forged.status == "error" and forged.error["ename"] == "PermissionError"
    assert killed.status == "kernel_died" and killed.restarted and "restarted" in killed.note
    assert after.status == "ok" and after.text() == "(False, 42)"


def test_the_attempt_is_a_valid_notebook(kernel_pool, tmp_path):
    with kernel_pool.attempt() as kernel:
        kernel.python("print('hello')")
        kernel.python("1 / 0")
        notebook = kernel.notebook(title="# an attempt")
    path = tmp_path / "attempt.ipynb"
    nbformat.write(notebook, str(path))
    read = nbformat.read(str(path), as_version=4)
    nbformat.validate(read)
    code = [cell for cell in read.cells if cell.cell_type == "code"]
    assert [cell.source for cell in code] == ["print('hello')", "1 / 0"]
    assert code[0].outputs[0]["text"] == "hello\n"
    assert code[1].outputs[0]["ename"] == "ZeroDivisionError"
    assert code[1].metadata["tasksynth"]["status"] == "error"


def test_attempts_do_not_see_each_other(kernel_pool):
    with kernel_pool.attempt() as kernel:
        kernel.python("secret = 7\nopen('/work/left.txt', 'w').write('x')")
    with kernel_pool.attempt() as kernel:
        names = kernel.python("import os\n('secret' in globals(), os.path.exists('/work/left.txt'))")
    assert names.text() == "(False, False)"


def test_the_kernel_is_isolated(kernel_pool):
    with kernel_pool.attempt() as kernel:
        who = kernel.python("import os\n(os.getuid(), os.getgid(), os.getcwd())")
        net = kernel.python("import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=2)\n"
                            "    print('connected')\nexcept OSError as e:\n    print('no network:', type(e).__name__)")
        data = kernel.python("try:\n    open('/data/sales/sales.csv', 'a').write('x')\n"
                             "except OSError as e:\n    print(type(e).__name__)")
        caps = kernel.python("print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1])")
        listeners = kernel.python("rows = [l.split() for l in open('/proc/net/tcp').read().splitlines()[1:]]\n"
                                  "sorted({r[1].split(':')[0] for r in rows if r[3] == '0A'})")
        name = kernel.host.session.name
    inspected = subprocess.run(["docker", "inspect", "--format",
                                "{{.HostConfig.NetworkMode}} {{json .HostConfig.PortBindings}}", name],
                               capture_output=True, text=True, check=True).stdout.split()
    assert who.text() == "(1000, 1000, '/work')"
    assert net.text().startswith("no network")
    assert data.text() in ("OSError", "PermissionError")
    assert caps.text() == "0000000000000000"
    # The kernel's channels are unix sockets; ipykernel's own output pipe listens on the container's
    # loopback only (127.0.0.1 of a network namespace with nothing else), and nothing is published.
    assert listeners.text() in ("[]", "['0100007F']")
    assert inspected[0] == "none" and inspected[1] in ("{}", "null")
