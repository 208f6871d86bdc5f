"""The trusted Maven fetcher: a Java project's dependencies and plugins, downloaded on the host, no code of the
project run.

Only the commit's pom.xml files are copied to a scratch folder (no sources, no `.mvn/`: no extensions.xml, no
maven.config, no wrapper), and Maven runs one goal there, `dependency:go-offline`, which resolves and downloads
without building. A pom that declares build extensions (`<extensions>`: code Maven loads into itself while it
reads the project) is refused before Maven starts. Every download goes to one repository, the configured
`code.maven_repository` (Maven Central's URL or a mirror of it), through a settings file that mirrors `*`
to it; the result is kept at `<home>/maven/<hash of the poms and the URL>/repository` and copied over Debian's
/usr/share/maven-repo in the image by a build without network (`tasksynth.docker.toolchains.maven_repository_image`).

With `code.maven_repository` empty, nothing is fetched: Debian's packaged repository is the only source, which
is how these machines work (Maven Central is not reachable from them). A fetch that fails names the repository
and Maven's own error lines (`DependencyUnavailable`, the candidate's `install_failed`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

from envbuilder.errors import UnsupportedProject
from envbuilder.repos import SourceTree
from envbuilder.wheelhouse import DependencyUnavailable
from tasksynth.config import Config
from tasksynth.hashing import content_hash

DEBIAN_MAVEN_REPO = "/usr/share/maven-repo"  # the recipe's local repository (envbuilder.runners_java)
GO_OFFLINE = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:go-offline"
_EXTENSIONS = re.compile(r"<extensions>")
_ERROR_LINE = re.compile(r"^\[ERROR\] (.+)$", re.M)
_MAVEN_ADVICE = ("To see the full", "Re-run Maven", "For more information", "[Help")


def settings_xml(repository_url: str, local_repository: Path) -> str:
    """Maven settings sending every request to one repository and keeping what it gets in `local_repository`."""
    return (f"<settings><localRepository>{escape(str(local_repository))}</localRepository><mirrors><mirror>"
            f"<id>tasksynth-fetch</id><mirrorOf>*</mirrorOf><url>{escape(repository_url)}</url></mirror></mirrors>"
            "<interactiveMode>false</interactiveMode></settings>\n")


def fetch_maven_repository(config: Config, tree: SourceTree, repository_url: str, *,
                           timeout_s: float = 900) -> tuple[Path, str]:
    """(the local Maven repository holding the project's dependencies, its key), downloaded once per poms and
    repository URL. Raises UnsupportedProject (no pom, build extensions) or DependencyUnavailable (Maven is
    missing, or the repository did not serve what the project needs)."""
    poms = {path: tree.read(path) or "" for path in tree.files if path == "pom.xml" or path.endswith("/pom.xml")}
    if "pom.xml" not in poms:
        raise UnsupportedProject("no pom.xml at the repository's root: not a Maven project")
    extended = sorted(path for path, text in poms.items() if _EXTENSIONS.search(text))
    if extended:
        raise UnsupportedProject(f"{', '.join(extended)} declares Maven build extensions: resolving the project "
                                 "would load their code into Maven on the host, so it is not fetched")
    key = content_hash("maven", sorted(poms.items()), repository_url, length=16)
    folder = config.home_path / "maven" / key
    if (folder / "repository").is_dir():
        return folder / "repository", key
    maven = shutil.which("mvn")
    if maven is None:
        raise DependencyUnavailable("Maven artifacts of pom.xml", "mvn is not installed on this host")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tasksynth-maven-", dir=folder.parent) as tmp:
        work = Path(tmp)
        for path, text in poms.items():
            (work / "project" / path).parent.mkdir(parents=True, exist_ok=True)
            (work / "project" / path).write_text(text)
        (work / "settings.xml").write_text(settings_xml(repository_url, work / "repository"))
        command = [maven, "-B", "-s", str(work / "settings.xml"), "-Dmaven.repo.local=" + str(work / "repository"),
                   "-Dmaven.wagon.http.retryHandler.count=0", GO_OFFLINE]
        try:
            result = subprocess.run(command, cwd=work / "project", capture_output=True, text=True, timeout=timeout_s,
                                    env={"PATH": "/usr/bin:/bin", "HOME": str(work), "MAVEN_OPTS": ""})
        except subprocess.TimeoutExpired:
            raise DependencyUnavailable("Maven artifacts of pom.xml", f"{repository_url} did not answer within "
                                        f"{timeout_s:.0f} s") from None
        if result.returncode != 0:
            errors = [line.replace(" -> [Help 1]", "") for line in _ERROR_LINE.findall(result.stdout + result.stderr)
                      if line.strip() and not line.startswith(_MAVEN_ADVICE)][:2]
            tail = "\n".join(errors) or "\n".join((result.stdout + result.stderr).strip().splitlines()[-4:])
            raise DependencyUnavailable("Maven artifacts of pom.xml",
                                        f"mvn dependency:go-offline from {repository_url} failed:\n{tail}")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (work / "repository").rename(folder / "repository")
    return folder / "repository", key


def with_fetched_repository(config: Config, tree: SourceTree, toolchain_tag: str) -> str:
    """The Java toolchain image, with the project's fetched artifacts over Debian's repository when
    `code.maven_repository` names one; unchanged otherwise."""
    if not config.code.maven_repository:
        return toolchain_tag
    from tasksynth.docker.toolchains import dependencies_image

    repository, key = fetch_maven_repository(config, tree, config.code.maven_repository)
    return dependencies_image(config, toolchain_tag, repository, DEBIAN_MAVEN_REPO, key, "java")
