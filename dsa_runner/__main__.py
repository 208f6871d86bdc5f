"""`python -m dsa_runner [--model ...] [--port 8000]`: serve the DSA model (the `runner serve` command)."""

from dsa_runner.server_cli import main

main()
