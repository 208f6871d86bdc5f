"""The supervisor of one validation container: it runs inside the container, as root with only the sandbox's
supervisor capabilities (`tasksynth.sandbox.SUPERVISOR_CAPS`: SETUID, SETGID, SETPCAP), and every test run
under it as the untrusted uid with no capabilities at all.

It is this file's own text that the host passes to `python3 -I -S -c` (the system interpreter, never the
repository's venv: `-S` skips site-packages, whose .pth files the repository's install code could have
written). Standard library only, since nothing of tasksynth is installed in the image.

Protocol. stdin: one JSON line (the runs, in the order to run them, each a list of patch numbers; the patches;
the test command and its limits; the work trees), then each tree's tar archive, its length given in the
header. Everything read from stdin stays with root: in this process's memory, or in the root-only folder
`PRIVATE` (a tmpfs of mode 0700). stdout: one JSON line per event, `start` when a run begins and `run` with
its results when it ends, the last one `done`. The run user can reach neither stream.

What the code under test can see: the trees as the image left them with the run's patches applied, the test
command and a report path, the same in every run. No phase name, no run number, no file naming either; the
host shuffles the order of the runs, so even a run that counts (pids, CPU time used so far) learns nothing
about its phase beyond chance.

Between runs, every process of the run user is killed by uid (a child that becomes that uid and calls
kill(-1): the kernel sends the signal to exactly the run user's processes, whatever session or group they
made), repeated until /proc shows none; then the run user's writable places are emptied (as the run user: they
are its files) and the trees extracted afresh from root's copies. The report is read after all of that run's
processes are dead, opened without following a link, only when it is a regular file, capped in bytes.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time

PRIVATE = "/run/supervisor"  # tmpfs, root-only (mode 0700): the trees' archives and the runs' logs
SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # root never runs a program the image's user could have placed
# Run as the run user: its writable places ("$@") emptied, then each tree extracted from the archive root
# opened for it ($TREES: path:descriptor pairs; the run user could not open root's files itself).
RESET_SCRIPT = r"""
chmod -R u+rwX -- "$@" 2>/dev/null
for folder; do find "$folder" -mindepth 1 -delete 2>/dev/null; done
ipcrm --all 2>/dev/null
left=$(find "$@" -mindepth 1 -print -quit 2>/dev/null)
if [ -n "$left" ]; then echo "a run left files that could not be removed: $left"; exit 1; fi
for pair in $TREES; do
  tree=${pair%:*} fd=${pair##*:}
  tar -x -p --strip-components=1 -f - -C "$tree" <&"$fd" || { echo "$tree could not be restored"; exit 2; }
done
"""


def main() -> int:
    stdin = sys.stdin.buffer
    header = json.loads(stdin.readline())
    os.chdir("/")
    trees = []
    try:
        for number, tree in enumerate(header["trees"]):
            archive = os.path.join(PRIVATE, "tree-%d.tar" % number)
            with open(archive, "wb") as handle:
                _copy(stdin, handle, tree["bytes"])
            trees.append((tree["path"], archive))
    except OSError as exc:  # the image's trees do not fit in the supervisor's tmpfs: the repository's doing
        _emit({"event": "start", "index": 0})
        _emit({"event": "run", "index": 0, "reset_failed": "the checkout does not fit in the sandbox's work "
               "folders (sandbox.tmpfs_bytes): %s" % exc})
        return 0
    supervisor = Supervisor(header, trees)
    for index, patches in enumerate(header["runs"]):
        _emit({"event": "start", "index": index})
        result = supervisor.run(patches)
        gradable = result.pop("gradable")
        result.update(event="run", index=index)
        _emit(result)
        if not gradable:
            break
    supervisor.kill_run_user(signal.SIGKILL)
    _emit({"event": "done"})
    return 0


class Supervisor:
    def __init__(self, header: dict, trees: list) -> None:
        self.header = header
        self.trees = trees
        self.uid = header["uid"]
        self.drop = [_resolve(header["drop"][0])] + header["drop"][1:]
        self.writable = [path for path, _ in trees] + header["scratch"]
        self.log_path = os.path.join(PRIVATE, "output.log")

    def run(self, patches: list) -> dict:
        started = time.monotonic()
        result = {"millis": 0, "reset_failed": None, "apply_failed": None, "apply_log": "", "exit_code": None,
                  "timed_out": False, "oom_kills": 0, "report": None, "report_error": None, "log": "",
                  "gradable": False}
        self.kill_run_user(signal.SIGKILL)
        problem = self.reset()
        if problem:
            result.update(reset_failed=problem, millis=_millis(started))
            return result
        for number in patches:
            applied, log = self.apply(self.header["patches"][number])
            if not applied:
                result.update(apply_failed=number, apply_log=log, millis=_millis(started))
                return result
        self.kill_run_user(signal.SIGKILL)  # nothing started while patching may outlive it
        result.update(self.test())
        result["millis"] = _millis(started)
        return result

    def reset(self) -> str | None:
        """The trees as the image left them, and every other place the run user can write emptied: one
        process of the run user, reading the archives from descriptors root opened for it."""
        archives = [open(archive, "rb") for _, archive in self.trees]
        try:
            trees = " ".join("%s:%d" % (path, handle.fileno()) for (path, _), handle in zip(self.trees, archives))
            done = subprocess.run(self.drop + ["bash", "-c", RESET_SCRIPT, "reset", *self.writable], cwd="/",
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  pass_fds=[handle.fileno() for handle in archives],
                                  env=dict(os.environ, TREES=trees))
        finally:
            for handle in archives:
                handle.close()
        if done.returncode != 0:
            return _tail(done.stdout.decode(errors="replace"), 2000) or "the work folders could not be reset"
        return None

    def apply(self, patch: str) -> tuple:
        """git apply, else patch(1), as the run user (git then reads only the run user's repository and writes
        files the run user owns), the patch text on stdin: it is never a file the tests could find."""
        git = self.as_run_user(["git", "-c", "core.hooksPath=/dev/null", "apply", "--verbose", "-"],
                               input=patch.encode(), capture=True, cwd=self.header["workdir"])
        if git.returncode == 0:
            return True, ""
        fallback = self.as_run_user(["patch", "--batch", "--forward", "-p1"], input=patch.encode(), capture=True,
                                    cwd=self.header["workdir"])
        log = git.stdout + fallback.stdout
        return fallback.returncode == 0, _tail(log, self.header["max_log_bytes"])

    def test(self) -> dict:
        limit, grace = self.header["limit"], self.header["kill_after"]
        ooms = _oom_kills()
        timed_out = False
        with open(self.log_path, "wb") as log:
            process = subprocess.Popen(self.drop + ["bash", "-c", self.header["command"]], stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, cwd=self.header["workdir"],
                                       preexec_fn=_first_to_die, start_new_session=True)
            try:
                code = process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                self.kill_run_user(signal.SIGTERM)
                try:
                    code = process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.kill_run_user(signal.SIGKILL)
                    code = process.wait()
        self.kill_run_user(signal.SIGKILL)  # whatever the tests left running, in any session or group
        ooms_after = _oom_kills()
        oom_kills = ooms_after - ooms if ooms >= 0 and ooms_after > ooms else 0
        code = 128 - code if code < 0 else code
        report, report_error = _read_regular(self.header["report"], self.header["max_report_bytes"])
        gradable = (not timed_out and not oom_kills and code in self.header["ok_codes"] and bool(report))
        return {"exit_code": code, "timed_out": timed_out, "oom_kills": oom_kills, "report": report,
                "report_error": report_error, "log": _read_head_tail(self.log_path, self.header["max_log_bytes"]),
                "gradable": gradable}

    def as_run_user(self, argv: list, *, stdin=None, input: bytes | None = None, capture: bool = False,
                    cwd: str = "/") -> subprocess.CompletedProcess:
        done = subprocess.run(self.drop + argv, stdin=stdin if input is None else None, input=input, cwd=cwd,
                              stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.STDOUT)
        done.stdout = (done.stdout or b"").decode(errors="replace")
        return done

    def kill_run_user(self, sig: int) -> None:
        """Signal every process of the run user, from a child that has become the run user: kill(-1) then
        reaches exactly its processes (and never root's), in one pass of the kernel. SIGKILL is repeated until
        none is left (a process forked between two passes is caught by the next)."""
        for attempt in range(200):
            if sig == signal.SIGKILL and not _pids_of(self.uid):
                return
            child = os.fork()
            if child == 0:
                try:
                    os.setgroups([])
                    os.setresgid(self.uid, self.uid, self.uid)
                    os.setresuid(self.uid, self.uid, self.uid)
                    os.kill(-1, sig)
                except OSError:
                    pass
                os._exit(0)
            os.waitpid(child, 0)
            if sig != signal.SIGKILL:
                return
            time.sleep(min(0.001 * (attempt + 1), 0.05))
        raise RuntimeError("processes of the run user survived 200 rounds of SIGKILL")


def _pids_of(uid: int) -> list:
    """Live (not zombie) processes whose real uid is `uid`."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/status" % name) as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        if fields.get("State", "").strip().startswith("Z"):
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            pids.append(int(name))
    return pids


def _first_to_die() -> None:
    """Make the test process (and what it starts) the OOM killer's first choice, before the supervisor."""
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write("1000")
    except OSError:
        pass


def _oom_kills() -> int:
    """The kernel's count of OOM kills in this container's memory cgroup (v2, then v1); -1: unknown."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as handle:
                for line in handle:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return -1


def _read_regular(path: str, limit: int) -> tuple:
    """(text, None) of a regular file the run wrote, or (None, why not). Never follows a link (O_NOFOLLOW),
    never blocks on a fifo (O_NONBLOCK), reads no device, and reads at most `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None, None
        if exc.errno == errno.ELOOP:
            return None, "the report is a symbolic link (not read)"
        return None, "the report could not be opened: %s" % os.strerror(exc.errno)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, "the report is not a regular file (not read)"
        if info.st_size > limit:
            return None, "the report has %d bytes, more than the %d read" % (info.st_size, limit)
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            return None, "the report grew past the %d bytes read" % limit
        return data.decode(errors="replace"), None
    finally:
        os.close(fd)


def _read_head_tail(path: str, limit: int) -> str:
    """The log, with only its head and tail when long (the tail matters most)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size <= limit:
                return handle.read().decode(errors="replace")
            head = handle.read(limit // 4)
            handle.seek(size - (limit - limit // 4))
            tail = handle.read()
    except OSError:
        return ""
    cut = size - len(head) - len(tail)
    return head.decode(errors="replace") + "\n[... %d bytes cut ...]\n" % cut + tail.decode(errors="replace")


def _resolve(program: str) -> str:
    for folder in SAFE_PATH.split(":"):
        candidate = os.path.join(folder, program)
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("%s is not in %s" % (program, SAFE_PATH))


def _copy(source, target, count: int) -> None:
    while count > 0:
        chunk = source.read(min(count, 1 << 20))
        if not chunk:
            raise RuntimeError("stdin ended %d bytes before the end of a tree's archive" % count)
        target.write(chunk)
        count -= len(chunk)


def _emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _millis(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _tail(text: str, limit: int) -> str:
    return text[-limit:]


if __name__ == "__main__":
    sys.exit(main())
