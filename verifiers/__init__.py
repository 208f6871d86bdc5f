"""Verification shared by every kind of task: JUnit parsing, F2P/P2F grading, answer matching, sandboxes."""
