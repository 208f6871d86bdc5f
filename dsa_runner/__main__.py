"""`python -m dsa_runner [--model ...] [--port 8000]`: serve the DSA model (see dsa_runner.server)."""

from dsa_runner.server import main

main()
