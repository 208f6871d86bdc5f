"""The tables code-interpreter tasks are asked about: real data shipped inside installed packages, or a
user's folder of CSV/Parquet files. Nothing generated passes as real data.

    datasets = materialise(config, ["penguins", "seattle-weather"])     # -> [Dataset], files under
    data_root(config)                                                  #    <home>/notebook/data/<name>/

Each dataset is copied once into the data folder that kernels mount read-only at /data (world-readable:
the sandbox's user reads it as "other"), with the sha256 of each file: a task carries its files' hashes, so
a trainer checks it grades against the same bytes. Well-known tables are allowed for synthesis (the
shortcut filter drops what a model answers from memory).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notebook_env.errors import NotebookEnvError

DATA_IN_KERNEL = "/data"


@dataclass(frozen=True)
class PackagedTable:
    package: str  # the importable package that ships the file (found without importing it)
    path: str  # the file, relative to the package's folder
    source: str  # where the data comes from, for the dataset card
    license: str
    description: str


# Tables shipped inside packages (PyPI: palmerpenguins, vega_datasets), read from their folders.
PACKAGED: dict[str, PackagedTable] = {
    "penguins": PackagedTable("palmerpenguins", "data/penguins.csv", "palmerpenguins (Horst, Hill, Gorman 2020)",
                              "CC0-1.0", "size measurements of 344 penguins of three species on three islands"),
    "seattle-weather": PackagedTable("vega_datasets", "_data/seattle-weather.csv", "vega-datasets",
                                     "BSD-3-Clause (vega-datasets)",
                                     "daily weather in Seattle 2012-2015: precipitation, temperatures, wind"),
    "stocks": PackagedTable("vega_datasets", "_data/stocks.csv", "vega-datasets", "BSD-3-Clause (vega-datasets)",
                            "monthly prices of five technology stocks 2000-2010"),
    "airports": PackagedTable("vega_datasets", "_data/airports.csv", "vega-datasets",
                              "BSD-3-Clause (vega-datasets)", "US airports with their city, state and location"),
    "iowa-electricity": PackagedTable("vega_datasets", "_data/iowa-electricity.csv", "vega-datasets",
                                      "BSD-3-Clause (vega-datasets)",
                                      "Iowa's yearly net electricity generation by source 2001-2017"),
    "us-employment": PackagedTable("vega_datasets", "_data/us-employment.csv", "vega-datasets",
                                   "BSD-3-Clause (vega-datasets)", "monthly US employment by sector 2006-2015"),
}
DEFAULT_DATASETS = ("penguins", "seattle-weather", "stocks", "iowa-electricity")
TABLE_SUFFIXES = (".csv", ".parquet")


@dataclass
class Dataset:
    name: str
    files: dict[str, str]  # file name -> sha256
    source: str
    license: str
    description: str
    preview: str = ""  # the header and first rows of each file, for the agents' prompts
    extra: dict[str, Any] = field(default_factory=dict)

    def paths_in_kernel(self) -> list[str]:
        return [f"{DATA_IN_KERNEL}/{self.name}/{name}" for name in sorted(self.files)]

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "files": self.files, "source": self.source, "license": self.license,
                "description": self.description}


def data_root(config: Any) -> Path:
    root = config.home_path / "notebook" / "data"
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    return root


def packaged_file(table: PackagedTable) -> Path:
    spec = importlib.util.find_spec(table.package)
    if spec is None or not spec.submodule_search_locations:
        raise NotebookEnvError(f"dataset package {table.package} is not installed (pip install {table.package})")
    path = Path(next(iter(spec.submodule_search_locations))) / table.path
    if not path.is_file():
        raise NotebookEnvError(f"{table.package} has no {table.path}")
    return path


def materialise(config: Any, names: list[str] | tuple[str, ...] = DEFAULT_DATASETS, *,
                folder: Path | None = None) -> list[Dataset]:
    """Copy the named packaged tables (and every CSV/Parquet file of `folder`, one dataset each, named after
    the file) into the data folder; unknown names are refused in one line."""
    unknown = [name for name in names if name not in PACKAGED]
    if unknown:
        raise NotebookEnvError(f"unknown dataset {', '.join(unknown)}; known: {', '.join(sorted(PACKAGED))}")
    root = data_root(config)
    datasets = []
    for name in names:
        table = PACKAGED[name]
        datasets.append(_place(root, name, [packaged_file(table)], table.source, table.license, table.description))
    if folder is not None:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in TABLE_SUFFIXES and p.is_file())
        if not files:
            raise NotebookEnvError(f"{folder} has no .csv or .parquet file")
        for path in files:
            name = "".join(c if c.isalnum() or c in "-_" else "-" for c in path.stem.lower())
            datasets.append(_place(root, name, [path], f"user folder {folder}", "as given by the user",
                                   f"the table {path.name}"))
    return datasets


def _place(root: Path, name: str, sources: list[Path], source: str, license: str, description: str) -> Dataset:
    folder = root / name
    folder.mkdir(exist_ok=True)
    folder.chmod(0o755)
    files, previews = {}, []
    for path in sources:
        target = folder / path.name
        if not target.is_file() or target.stat().st_size != path.stat().st_size:
            temporary = target.with_suffix(target.suffix + ".tmp")
            shutil.copyfile(path, temporary)
            temporary.chmod(0o644)
            temporary.replace(target)
        files[path.name] = hashlib.sha256(target.read_bytes()).hexdigest()
        if path.suffix.lower() == ".csv":
            with open(target, errors="replace") as handle:
                head = [next(handle, "") for _ in range(4)]
            previews.append(f"{DATA_IN_KERNEL}/{name}/{path.name}:\n" + "".join(head))
        else:
            previews.append(f"{DATA_IN_KERNEL}/{name}/{path.name} (Parquet)")
    return Dataset(name, files, source, license, description, "\n".join(previews))
