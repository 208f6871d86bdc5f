"""Benchmark: the sandbox call pool against `docker exec` and `docker run`, in the same run.

Prints:
  - the round trip of a trivial call (`def echo(x): return x`) from the host client, p50 and p99, through
    the call pool (warm container, one socket round trip, one fork in the container), `docker exec` into a
    warm container of the same image, and `docker run` per call: target p50 <= 5 ms and >= 20x faster than
    `docker exec` at p50. The pool is timed twice: calls back to back, and with --gap-ms idle before each
    call, as between an agent's turns (each call's child is forked when its request arrives: the idle
    time only leaves caches colder);
  - attempts per second of a realistic attempt: a fresh copy of a 1 MiB SQLite master (3 tables, 10k rows),
    a loaded toolkit module, 5 indexed read/write tool calls and one verifier call; as many attempts at once
    as the pool has containers (by default the product's own bound, `sandbox.max_containers`: a container
    waits on round trips between its calls, so a pool of one per core leaves the cores partly idle):
    target >= 100 attempts/s on 2 cores. The same attempt is timed with `docker exec` (copy the master,
    6 exec calls) as the baseline;
  - the CPU each call and each attempt costs (the host process plus the containers' cgroups), and what
    that allows if two cores were ours alone: the figure that does not move with other work on the machine;
  - the load average before and after: on a shared machine the absolute times move with it.

With --compare-supervisor PATH (a supervisor.py of an earlier version, e.g. from `git show`), it measures only
the CPU per realistic attempt of that supervisor (started as it was then: as the main script) against the
current one, in blocks of attempts alternating between one container of each: on a loaded machine the only
comparison that holds. --earlier-imported starts the earlier one as the current one is started (imported),
for versions that are started that way.

Run: python bench/sandbox.py [--calls 300] [--seconds 10] [--containers N] [--exec-calls 20] [--run-calls 3]
     python bench/sandbox.py --compare-supervisor /tmp/old_supervisor.py [--blocks 16] [--per-block 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasksynth.config import load_config  # noqa: E402
from tasksynth.docker.ownership import owner_labels  # noqa: E402
import tasksynth.sandbox.container as sandbox_container  # noqa: E402
from tasksynth.sandbox import CallPool, Limits, isolated_run_args  # noqa: E402
from tasksynth.sandbox.pool import default_image  # noqa: E402

TRIVIAL = "def echo(x):\n    return x\n"

TOOLKIT = '''
import os, sqlite3

def _db():
    return sqlite3.connect(os.environ["SANDBOX_STATE"])

def get_customer(customer_id):
    row = _db().execute("select name, city from customers where id = ?", (customer_id,)).fetchone()
    return {"name": row[0], "city": row[1]}

def orders_of(customer_id):
    return [r[0] for r in _db().execute("select id from orders where customer_id = ? order by id", (customer_id,))]

def add_order(customer_id, product_id, quantity):
    with _db() as db:
        cur = db.execute("insert into orders(customer_id, product_id, quantity) values (?, ?, ?)",
                         (customer_id, product_id, quantity))
        db.execute("update products set stock = stock - ? where id = ?", (quantity, product_id))
        return cur.lastrowid

def stock(product_id):
    return _db().execute("select stock from products where id = ?", (product_id,)).fetchone()[0]
'''

VERIFIER = '''
import os, sqlite3

def verify(customer_id, product_id, expected_stock):
    db = sqlite3.connect(os.environ["SANDBOX_STATE"])
    ordered = db.execute("select count(*) from orders where customer_id = ? and product_id = ?",
                         (customer_id, product_id)).fetchone()[0]
    left = db.execute("select stock from products where id = ?", (product_id,)).fetchone()[0]
    return ordered >= 1 and left == expected_stock
'''


def make_master(path: Path) -> None:
    """3 tables, 10k rows in all, padded to about 1 MiB."""
    with sqlite3.connect(path) as db:
        db.executescript("""
            create table customers(id integer primary key, name text, city text, note text);
            create table products(id integer primary key, title text, stock integer);
            create table orders(id integer primary key, customer_id integer, product_id integer, quantity integer);
            create index orders_by_customer on orders(customer_id);
        """)
        db.executemany("insert into customers values (?, ?, ?, ?)",
                       [(i, f"customer {i}", f"city {i % 50}", "x" * 250) for i in range(3000)])
        db.executemany("insert into products values (?, ?, ?)", [(i, f"product {i}", 1000) for i in range(2000)])
        db.executemany("insert into orders(customer_id, product_id, quantity) values (?, ?, ?)",
                       [(i % 3000, i % 2000, 1 + i % 5) for i in range(5000)])
    db = sqlite3.connect(path)
    db.execute("vacuum")
    db.close()


def one_attempt(pool: CallPool, master: Path, n: int) -> bool:
    customer, product = n % 3000, n % 2000
    with pool.attempt(state_master=master) as attempt:
        attempt.load("toolkit", TOOLKIT)
        before = attempt.call_module("toolkit", "stock", [product]).result
        attempt.call_module("toolkit", "get_customer", [customer])
        attempt.call_module("toolkit", "orders_of", [customer])
        attempt.call_module("toolkit", "add_order", [customer, product, 2])
        attempt.call_module("toolkit", "orders_of", [customer])
        verdict = attempt.call(VERIFIER, "verify", [customer, product, before - 2])
        return verdict.ok and verdict.result is True


def container_cpu_files(names: list[str]) -> list[Path] | None:
    """The cgroup file (v1 cpuacct.usage or v2 cpu.stat) of each container; None if one cannot be found.
    Found once, before timing: a `docker inspect` per container takes tens of milliseconds."""
    files = []
    for name in names:
        cid = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", name], capture_output=True, text=True).stdout.strip()
        v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
        v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat")
        if v1.exists():
            files.append(v1)
        elif v2.exists():
            files.append(v2)
        else:
            return None
    return files


def container_cpu_seconds(files: list[Path] | None) -> float | None:
    """CPU used so far by the containers of these cgroup files; None if unreadable."""
    if files is None:
        return None
    total = 0.0
    try:
        for path in files:
            text = path.read_text()
            total += int(text) / 1e9 if path.name == "cpuacct.usage" else int(text.split("usage_usec")[1].split()[0]) / 1e6
    except (OSError, ValueError, IndexError):
        return None
    return total


class CpuMeter:
    """CPU of this process (all threads) plus the given containers, between start() and stop()."""

    def __init__(self, names: list[str]):
        self.files = container_cpu_files(names)

    def __enter__(self) -> "CpuMeter":
        self.host, self.containers = time.process_time(), container_cpu_seconds(self.files)
        return self

    def __exit__(self, *_: object) -> None:
        after = container_cpu_seconds(self.files)
        self.host_s = time.process_time() - self.host
        self.container_s = None if after is None or self.containers is None else after - self.containers


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def timed(fn, n: int, gap_s: float = 0.0) -> list[float]:
    """Times of n calls of fn; `gap_s` of idle time before each (not counted), as a caller that does
    something else between calls (an agent's next model turn) leaves."""
    times = []
    for _ in range(n):
        time.sleep(gap_s)
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to run attempts")
    parser.add_argument("--containers", type=int, default=None,
                        help="attempts at once (default: the configured sandbox.max_containers)")
    parser.add_argument("--exec-calls", type=int, default=20)
    parser.add_argument("--run-calls", type=int, default=3)
    parser.add_argument("--gap-ms", type=float, default=5.0, help="idle time before each call, second series")
    parser.add_argument("--compare-supervisor", type=Path, help="an earlier supervisor.py to compare CPU with")
    parser.add_argument("--earlier-imported", action="store_true",
                        help="with --compare-supervisor: start the earlier one imported, as the current one is "
                             "(for versions since the import start), not as the main script")
    parser.add_argument("--blocks", type=int, default=16, help="with --compare-supervisor: blocks per version")
    parser.add_argument("--per-block", type=int, default=5, help="with --compare-supervisor: attempts per block")
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    config = load_config(environ={**os.environ, "TASKSYNTH_HOME": str(work / "home")})
    options.containers = options.containers or config.sandbox.max_containers
    master = work / "master.sqlite"
    make_master(master)
    cores = len(os.sched_getaffinity(0))
    image = default_image(config)
    print(f"cores usable {cores} of {os.cpu_count()}, load average before: {loadavg()}; image {image}; "
          f"master {master.stat().st_size / 2**20:.2f} MiB")
    if options.compare_supervisor:
        compare_supervisors(config, image, master, options)
        print(f"\nload average after: {loadavg()}")
        shutil.rmtree(work, ignore_errors=True)
        return
    exec_times, exec_attempt_times, run_times = engine_baselines(config, image, master, options)
    pool_times, gap_times, attempts, failures, elapsed, call_cpu, attempt_cpu = pool_figures(config, image, master,
                                                                                          options)

    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    p50_pool = statistics.median(pool_times)
    print("\ntrivial call round trip (host client):")
    print(f"  call pool     p50 {ms(p50_pool)}  p99 {ms(percentile(pool_times, 0.99))}  (n={len(pool_times)}, "
          "back to back; target p50 <= 5 ms)")
    print(f"  call pool     p50 {ms(statistics.median(gap_times))}  p99 {ms(percentile(gap_times, 0.99))}  "
          f"(n={len(gap_times)}, {options.gap_ms:g} ms idle before each)")
    p50_exec, p50_run = statistics.median(exec_times), statistics.median(run_times)
    print(f"  docker exec   p50 {ms(p50_exec)}  p99 {ms(percentile(exec_times, 0.99))}  (n={len(exec_times)})")
    print(f"  docker run    p50 {ms(p50_run)}  (n={len(run_times)})")
    p50_gap = statistics.median(gap_times)
    print(f"  pool vs docker exec at p50: {p50_exec / p50_pool:.1f}x faster back to back, {p50_exec / p50_gap:.1f}x "
          f"with idle time (target >= 20x); vs docker run: {p50_run / p50_pool:.0f}x, {p50_run / p50_gap:.0f}x")
    rate, exec_rate = attempts / elapsed, 1 / statistics.median(exec_attempt_times)
    print(f"\nrealistic attempts (1 MiB master copy, toolkit, 5 tool calls, 1 verifier), {options.containers} at once:")
    print(f"  call pool     {rate:.1f} attempts/s ({attempts} in {elapsed:.1f} s on {cores} cores, "
          f"{failures} failed verification; target >= 100/s on 2 cores)")
    print(f"  docker exec   {exec_rate:.2f} attempts/s, one at a time "
          f"({ms(statistics.median(exec_attempt_times))} per attempt); pool/exec {rate / exec_rate:.0f}x")
    if call_cpu.container_s is not None and attempts:
        per_call = (call_cpu.host_s + call_cpu.container_s) / len(pool_times)
        per_attempt = (attempt_cpu.host_s + attempt_cpu.container_s) / attempts
        print(f"\nCPU (host client + containers): {ms(per_call)} per trivial call "
              f"(host {ms(call_cpu.host_s / len(pool_times))}), {ms(per_attempt)} per attempt "
              f"(host {ms(attempt_cpu.host_s / attempts)})")
        print(f"  with 2 cores to ourselves that allows about {2 / per_attempt:.0f} attempts/s "
              f"(CPU-bound estimate, not a measurement)")
    print(f"\nload average after: {loadavg()}")
    shutil.rmtree(work, ignore_errors=True)


def compare_supervisors(config, image: str, master: Path, options) -> None:
    """CPU per realistic attempt (host client + container) of an earlier supervisor and of the current one,
    one container each, blocks of attempts alternating (the order flipped every block)."""
    current_source, start_container = sandbox_container.SUPERVISOR_SOURCE, sandbox_container.docker

    def as_main_script(*args, **kwargs):
        # How supervisors before the import start were run: `python3 -I -S /opt/.../supervisor.py SOCKET`.
        args = list(args)
        if "-c" in args:
            at = args.index("-c")
            args[at:at + 2] = [sandbox_container.SUPERVISOR_IN_CONTAINER]
        return start_container(*args, **kwargs)

    pools = {}
    try:
        for label, source in (("earlier", options.compare_supervisor.resolve()), ("current", current_source)):
            sandbox_container.SUPERVISOR_SOURCE = source
            as_script = label == "earlier" and not options.earlier_imported
            sandbox_container.docker = as_main_script if as_script else start_container
            pool = CallPool(config, image, size=1, slot_dir=str(master.parent / f"slots-{label}"))
            pools[label] = pool
            assert one_attempt(pool, master, 0), f"the {label} supervisor failed the attempt's verification"
    finally:
        sandbox_container.SUPERVISOR_SOURCE, sandbox_container.docker = current_source, start_container
    per_attempt: dict[str, list[float]] = {label: [] for label in pools}
    meters = {label: CpuMeter(pool.container_names()) for label, pool in pools.items()}
    n = 0
    try:
        for block in range(options.blocks):
            for label in (list(pools) if block % 2 == 0 else list(pools)[::-1]):
                with meters[label] as cpu:
                    for _ in range(options.per_block):
                        n += 1
                        one_attempt(pools[label], master, n)
                per_attempt[label].append((cpu.host_s + (cpu.container_s or 0.0)) / options.per_block)
    finally:
        for pool in pools.values():
            pool.close()
    earlier, current = (statistics.median(per_attempt[label]) for label in ("earlier", "current"))
    print(f"\nCPU per realistic attempt (host client + container), median of {options.blocks} blocks of "
          f"{options.per_block}, alternating:")
    print(f"  earlier supervisor {earlier * 1000:.2f} ms  ({options.compare_supervisor})")
    print(f"  current supervisor {current * 1000:.2f} ms  ({current / earlier - 1:+.1%}); with 2 cores to "
          f"ourselves about {2 / current:.0f} attempts/s against {2 / earlier:.0f} (CPU-bound estimates)")


def engine_baselines(config, image: str, master: Path, options) -> tuple[list[float], list[float], list[float]]:
    """`docker exec` into a warm container and `docker run` per call: the same function, the same isolation."""
    limits = Limits.from_config(config)
    warm = "tasksynth-bench-exec"
    subprocess.run(["docker", "rm", "-f", warm], capture_output=True)
    subprocess.run(["docker", "run", "-d", "--rm", *isolated_run_args(limits, name=warm,
                   labels=owner_labels(config.home_path, "oneshot")), image, "sleep", "3600"],
                   check=True, capture_output=True)
    call_py = TRIVIAL + "print(echo(1))"
    try:
        exec_times = timed(lambda: subprocess.run(["docker", "exec", warm, "python3", "-c", call_py],
                                                  check=True, capture_output=True), options.exec_calls)

        def exec_attempt() -> None:
            script = f"{TOOLKIT}\n{VERIFIER}\n"
            subprocess.run(["docker", "exec", "-i", warm, "sh", "-c", "cat > /tmp/state.sqlite"],
                           input=master.read_bytes(), check=True, capture_output=True)
            for call in ["stock(5)", "get_customer(5)", "orders_of(5)", "add_order(5, 5, 2)", "orders_of(5)",
                         "verify(5, 5, 998)"]:
                subprocess.run(["docker", "exec", "-e", "SANDBOX_STATE=/tmp/state.sqlite", warm, "python3", "-c",
                                f"{script}\nprint({call})"], check=True, capture_output=True)

        exec_attempt_times = timed(exec_attempt, 2)
    finally:
        subprocess.run(["docker", "rm", "-f", warm], capture_output=True)
    run_times = timed(lambda: subprocess.run(
        ["docker", "run", "--rm", *isolated_run_args(limits, name=f"tasksynth-bench-run-{time.monotonic_ns()}",
                                                     labels=owner_labels(config.home_path, "oneshot")),
         image, "python3", "-c", call_py], check=True, capture_output=True), options.run_calls)
    return exec_times, exec_attempt_times, run_times


def pool_figures(config, image: str, master: Path, options) -> tuple:
    with CallPool(config, image, size=options.containers, slot_dir=str(master.parent / "slots")) as pool:
        pool.call(TRIVIAL, "echo", [0])  # start the first container
        with pool.attempt() as attempt:
            with CpuMeter(pool.container_names()) as call_cpu:
                pool_times = timed(lambda: attempt.call(TRIVIAL, "echo", [1]), options.calls)
            gap_times = timed(lambda: attempt.call(TRIVIAL, "echo", [1]), options.calls, gap_s=options.gap_ms / 1000)
        # warm every container, then run attempts from one thread per container
        threads = [threading.Thread(target=one_attempt, args=(pool, master, i)) for i in range(options.containers)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        counts, failures = [0] * options.containers, [0] * options.containers
        meter = CpuMeter(pool.container_names())
        go = threading.Event()

        def worker(index: int) -> None:
            n = index
            go.wait()
            while time.monotonic() < stop:
                ok = one_attempt(pool, master, n)
                counts[index] += 1
                failures[index] += 0 if ok else 1
                n += options.containers

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(options.containers)]
        [t.start() for t in threads]
        with meter as attempt_cpu:
            started = time.monotonic()
            stop = started + options.seconds
            go.set()
            [t.join() for t in threads]
            elapsed = time.monotonic() - started
    return pool_times, gap_times, sum(counts), sum(failures), elapsed, call_cpu, attempt_cpu


if __name__ == "__main__":
    main()
