"""Benchmark: the code-interpreter kernel tool, warm pool against a cold kernel, in the same run.

Prints:
  - attempt start: the time from `pool.attempt()` to a kernel that runs a cell, with a warm pool (the host
    was reset and its fresh kernel started in the background after the previous attempt): target <= 300 ms.
    Baseline: a cold start (a new sandbox container, driver and kernel started and warmed up), which is what
    each attempt would cost without the pool;
  - `python("1+1")` round trip from the host, p50 and p99: target p50 <= 50 ms. Baseline: a `session.run
    ("true")` on the same container's supervisor (fork, exec of sh, sweep), the sandbox's cheapest command;
  - a host's recycle (reset, new kernel) costs about a cold start, in the background: the pool must hold
    more hosts than attempts run at once, as many more as recycles fit in an attempt's length;
  - the load average before and after: the machine is shared, so the absolute times move with it.

Run: python bench/notebook_kernel.py [--attempts 10] [--calls 200] [--size 3] [--idle-s 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from notebook_env.kernel import KernelHost, KernelPool  # noqa: E402
from notebook_env.kernel_image import kernel_image  # noqa: E402
from tasksynth.config import load_config  # noqa: E402
from tasksynth.sandbox import Limits  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attempts", type=int, default=10)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--idle-s", type=float, default=4.0, help="between attempts, as an agent's episode takes")
    parser.add_argument("--size", type=int, default=3, help="kernel hosts kept warm")
    args = parser.parse_args()
    config = load_config()
    image = kernel_image(config).tag
    print(f"cores {os.cpu_count()}, load average before: {loadavg()}; image {image}; pool of {args.size}, "
          f"{args.idle_s:g} s between attempts")
    data = Path(tempfile.mkdtemp(prefix="bench-kernel-"))
    data.chmod(0o755)
    limits = Limits.from_config(config, memory="1g")

    started = time.monotonic()
    cold = KernelHost(config, image, data, limits)
    cold_start = time.monotonic() - started
    session = cold.session
    runs = []
    for _ in range(max(10, args.calls // 4)):
        t = time.monotonic()
        session.run("true")
        runs.append(time.monotonic() - t)
    cold.close()

    starts, cells, found_ready = [], [], []
    with KernelPool(config, image, data_root=data, size=args.size, limits=limits) as pool:
        time.sleep(args.idle_s)
        for _ in range(args.attempts):
            ready = pool.ready_now() > 0
            t = time.monotonic()
            with pool.attempt() as kernel:
                first = kernel.python("1+1")
                starts.append(time.monotonic() - t - first.seconds)
                found_ready.append(ready)
                assert first.text() == "2", first
                for _ in range(args.calls // args.attempts):
                    t = time.monotonic()
                    kernel.python("1+1")
                    cells.append(time.monotonic() - t)
            time.sleep(args.idle_s)
    print(f"attempt start (warm pool): p50 {ms(statistics.median(starts))}, p99 {ms(percentile(starts, .99))} "
          f"[target <= 300 ms]; cold start (baseline): {ms(cold_start)}; "
          f"ratio {cold_start / statistics.median(starts):.0f}x")
    ready_starts = [s for s, ready in zip(starts, found_ready) if ready]
    if ready_starts:
        print(f"  of which {len(ready_starts)} of {len(starts)} found a kernel ready: p50 "
              f"{ms(statistics.median(ready_starts))}, max {ms(max(ready_starts))}; the others waited for a recycle")
    print(f'python("1+1"): p50 {ms(statistics.median(cells))}, p99 {ms(percentile(cells, .99))} over {len(cells)} '
          f'calls [target p50 <= 50 ms]; session.run("true") (baseline): p50 {ms(statistics.median(runs))}, '
          f"ratio {statistics.median(cells) / statistics.median(runs):.2f}x")
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
