"""Runner throughput vs llama.cpp's llama-server on the same GGUF (see dsa_runner/throughput.py for what is
measured).

    python bench/runner_throughput.py --llama-server PATH   # CPU: 1 greedy stream, n=16, 8 concurrent,
                                                            # 1 stream above top-k; llama-server batching the same
    python bench/runner_throughput.py --device cuda    # GPU: n=100, 128-token prompt, 256 new tokens
    python bench/runner_throughput.py --help

Same as `tasksynth runner bench`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsa_runner.server_cli import app  # noqa: E402

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]])
