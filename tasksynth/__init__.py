"""tasksynth: verifiable agentic RL tasks at scale (code environments, search QA, general tool environments)."""

__version__ = "0.1.0"
