"""Prefect flows: thin compositions of the pipeline steps, one module per pipeline."""
