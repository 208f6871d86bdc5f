"""Where candidates come from: a git history, SWE-bench-format files, GitHub. All feed the candidates table."""
