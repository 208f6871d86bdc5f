"""Fixtures of the general-environment tests: the hand-written travel world in world_fixtures.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
