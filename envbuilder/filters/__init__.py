"""Filters of code candidates: what to keep, and the reason for what is dropped."""
