"""The notebook repository the demo mines, built from shipped notebooks and packaged real data.

`data/samples/seattle-notebooks/` holds two notebooks about Seattle's daily weather (one run top to bottom and
ending on its answer, one never run to the end) and a README; `build_notebook_sample` commits them, with the
`seattle-weather.csv` table of the installed `vega_datasets` package in `data/`, into a git repository with a
fixed author and date: every build gives the same files, so a rerun of the demo finds the notebooks mined.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from envbuilder.repos import FIXED_IDENTITY, git
from notebook_env.datasets import PACKAGED, packaged_file

SAMPLE_NAME = "seattle-notebooks"
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "samples" / SAMPLE_NAME
SAMPLE_DATE = "2024-01-01T09:00:00+00:00"


def build_notebook_sample(repos_dir: Path) -> Path:
    """The sample as a fresh git repository at `repos_dir/seattle-notebooks` (replacing what was there)."""
    dest = Path(repos_dir) / SAMPLE_NAME
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(SAMPLE_DIR, dest)
    (dest / "data").mkdir()
    shutil.copyfile(packaged_file(PACKAGED["seattle-weather"]), dest / "data" / "seattle-weather.csv")
    git(dest, "init", "--quiet")
    git(dest, "add", "--all")
    git(dest, "commit", "--quiet", "--no-verify", "-m", "Seattle weather analyses",
        env={**FIXED_IDENTITY, "GIT_AUTHOR_DATE": SAMPLE_DATE, "GIT_COMMITTER_DATE": SAMPLE_DATE})
    return dest
