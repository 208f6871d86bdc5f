"""The command-line interface; each group lives in its own module."""
