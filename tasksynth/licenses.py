"""What is known of a source's license: a repository's license file, a Debian package's copyright file, a
Python package's metadata. Used by the dataset card; "unknown" is an honest answer, a guess is not."""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path

UNKNOWN = "unknown"
# (SPDX id, phrases that must all appear), most specific first.
_SIGNATURES = (
    ("AGPL-3.0", ("GNU AFFERO GENERAL PUBLIC LICENSE", "Version 3")),
    ("LGPL-3.0", ("GNU LESSER GENERAL PUBLIC LICENSE", "Version 3")),
    ("LGPL-2.1", ("GNU LESSER GENERAL PUBLIC LICENSE", "Version 2.1")),
    ("GPL-3.0", ("GNU GENERAL PUBLIC LICENSE", "Version 3")),
    ("GPL-2.0", ("GNU GENERAL PUBLIC LICENSE", "Version 2")),
    ("Apache-2.0", ("Apache License", "Version 2.0")),
    ("MPL-2.0", ("Mozilla Public License", "2.0")),
    ("BSD-3-Clause", ("Redistribution and use", "Neither the name")),
    ("BSD-2-Clause", ("Redistribution and use", "THIS SOFTWARE IS PROVIDED")),
    ("ISC", ("Permission to use, copy, modify, and/or distribute",)),
    ("MIT", ("Permission is hereby granted, free of charge",)),
    ("Unlicense", ("This is free and unencumbered software",)),
)
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENSE.rst", "COPYING", "COPYING.txt", "LICENCE")


def classify_license_text(text: str) -> str:
    """The SPDX id whose signature phrases the text contains, or "unknown"."""
    flat = " ".join(text.split())
    for spdx, phrases in _SIGNATURES:
        if all(" ".join(p.split()) in flat for p in phrases):
            return spdx
    return UNKNOWN


def repository_license(path: str | Path, commit: str | None = None) -> str:
    """The license of a local git repository, from its license file at `commit` (default HEAD)."""
    root = Path(path)
    if not (root / ".git").exists() and not (root / "HEAD").exists():
        return UNKNOWN
    for name in LICENSE_FILES:
        try:
            shown = subprocess.run(["git", "-C", str(root), "show", f"{commit or 'HEAD'}:{name}"],
                                   capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return UNKNOWN
        if shown.returncode == 0 and shown.stdout.strip():
            return classify_license_text(shown.stdout)
    return UNKNOWN


def debian_package_license(package: str) -> str:
    """The licenses a Debian package's machine-readable copyright file names (`License:` fields)."""
    copyright_file = Path("/usr/share/doc") / package / "copyright"
    try:
        text = copyright_file.read_text(errors="replace")
    except OSError:
        return UNKNOWN
    names = list(dict.fromkeys(m.strip() for m in re.findall(r"^License:\s*(\S[^\n]*)$", text, re.M)))
    return " AND ".join(names) if names else classify_license_text(text)


def python_package_license(package: str) -> str:
    """A Python distribution's declared license (License-Expression, License, or its classifiers)."""
    try:
        info = metadata.metadata(package)
    except metadata.PackageNotFoundError:
        return UNKNOWN
    for key in ("License-Expression", "License"):
        value = (info.get(key) or "").strip()
        if value and len(value) < 100 and value.upper() != "UNKNOWN":
            return value
    classifiers = [c.split("::")[-1].strip() for c in info.get_all("Classifier") or [] if c.startswith("License ::")]
    return " AND ".join(classifiers) if classifiers else UNKNOWN
