"""Language toolchains on top of a base image, from Debian's packages: Go (golang-go) and the Go libraries
Debian packages (`golang-*-dev`, sources under /usr/share/gocode), the offline source of Go dependencies;
JavaScript (Debian's nodejs), a project's npm dependencies added by `node_modules_image`.
Java (Debian's JDK 17 and Maven, its `lib*-java` packages forming the offline Maven repository
/usr/share/maven-repo) and PHP (php-cli, PHPUnit, `php-*` libraries under /usr/share/php); what a trusted fetcher
downloaded for a project is laid over them by `dependencies_image`.

No container here has network, so apt cannot run inside a build: the host (trusted code, ours) downloads the
packages and their dependency closure with `apt-get download` into `<home>/debs/<language>/`, and
`docker build --network none` installs them with dpkg on top of the base image. Tag:
`tasksynth/toolchain:<language>-<hash of base tag and package files>`; an existing tag is a cache hit.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tasksynth.config import Config
from tasksynth.docker.base_images import image_lock
from tasksynth.docker.engine import MANAGED_LABEL, docker, image_exists
from tasksynth.errors import ImageBuildFailed
from tasksynth.hashing import content_hash, sha256_bytes

TOOLCHAIN_VERSION = 1
# Debian bookworm names; the closure beyond the base image (which has libc) is listed whole.
# Java: the JDK, Maven, and the Java libraries Debian packages (JUnit 4 and 5, commons-lang3, Surefire, the
# compiler and resources plugins), whose jars and poms form the offline Maven repository /usr/share/maven-repo.
# PHP: the CLI, PHPUnit and Debian's `php-*` libraries (symfony/yaml), autoloadable under /usr/share/php.
# Both closures were resolved by apt against the base image's installed packages.
_JAVA_PACKAGES = """
    sgml-base ca-certificates-java java-common libavahi-common-data libavahi-common3 libdbus-1-3
    libavahi-client3 libcups2 libpng16-16 libfreetype6 fonts-dejavu-core fontconfig-config libfontconfig1
    liblcms2-2 libjpeg62-turbo libnspr4 libnss3 libasound2-data libasound2 libglib2.0-0 libgraphite2-3
    libharfbuzz0b libpcsclite1 openjdk-17-jre-headless default-jre-headless ant openjdk-17-jdk-headless
    default-jdk-headless unzip java-wrappers libhamcrest-java junit4 libapiguardian-java libopentest4j-java
    libopentest4j-reporting-java libpicocli-java libunivocity-parsers-java junit5 libaopalliance-java
    libapache-pom-java libasm-java libatinject-jsr330-api-java libjaxp1.3-java libxml-commons-external-java
    libcommons-parent-java libcommons-io-java libcommons-logging-java libxmlgraphics-commons-java libbatik-java
    libbsh-java libgeronimo-interceptor-3.0-spec-java libcdi-api-java libcommons-collections3-java
    libcommons-beanutils-java libcommons-cli-java libcommons-codec-java libcommons-compress-java
    libcommons-lang-java libcommons-configuration-java libcommons-digester-java libcommons-lang3-java
    libplexus-utils2-java libplexus-io-java libslf4j-java libsnappy1v5 libsnappy-jni libsnappy-java libxz-java
    libplexus-archiver-java libplexus-interpolation-java libmaven-archiver-java libmaven-shared-utils-java
    libgeronimo-annotation-1.3-spec-java liberror-prone-java libjsr305-java libguava-java libguice-java
    libmaven-parent-java libwagon-provider-api-java libmaven-resolver-java libplexus-cipher-java
    libplexus-classworlds-java libplexus-component-annotations-java libplexus-sec-dispatcher-java
    libsisu-inject-java libsisu-plexus-java libmaven3-core-java libmaven-shared-io-java
    libmaven-file-management-java libmaven-jar-plugin-java libcommons-text-java libcommons-validator-java
    libjaxen-java libdom4j-java libhttpcore-java libhttpclient-java libdoxia-core-java libfontbox2-java
    libqdox-java libfop-java libitext1-java libxbean-reflect-java libplexus-container-default-java
    libdoxia-java libmaven-reporting-api-java libplexus-i18n-java velocity libplexus-velocity-java liboro-java
    libvelocity-tools-java libxml-commons-resolver1.1-java libxerces2-java libxalan2-java
    libdoxia-sitetools-java libjansi-java libjsoup-java libjtidy-java libmaven-common-artifact-filters-java
    libmaven-shared-incremental-java libplexus-compiler-java libqdox2-java libplexus-languages-java
    libmaven-compiler-plugin-java libplexus-build-api-java libmaven-filtering-java libmaven-reporting-impl-java
    libplexus-container-default1.5-java libplexus-ant-factory-java libplexus-bsh-factory-java
    libmaven-plugin-tools-java libmaven-resources-plugin-java libsurefire-java libwagon-file-java
    libwagon-http-shaded-java maven
""".split()
_PHP_PACKAGES = """
    sensible-utils ucf javascript-common libargon2-1 libbsd0 libedit2 libicu72 libjs-popper.js libjs-bootstrap4
    libjs-d3 libmagic-mgc libmagic1 libonig5 libsodium23 libxml2 libxslt1.1 psmisc php-common php8.2-common
    php8.2-opcache php8.2-readline php8.2-cli php-cli php8.2-xml php-xml php-parser php-file-iterator
    php-text-template phpunit-code-unit-reverse-lookup phpunit-complexity phpunit-environment
    phpunit-lines-of-code phpunit-version php-tokenizer php-codecoverage php-deepcopy php-doctrine-instantiator
    php-invoker php8.2-mbstring php-mbstring php-phar-io-version php-phar-io-manifest
    php-symfony-deprecation-contracts php-symfony-yaml php-timer phpunit-cli-parser phpunit-code-unit
    phpunit-diff phpunit-recursion-context phpunit-exporter phpunit-comparator phpunit-object-reflector
    phpunit-global-state phpunit-object-enumerator phpunit-resource-operations phpunit-type phpunit
""".split()
TOOLCHAIN_PACKAGES: dict[str, list[str]] = {
    "go": ["golang-go", "golang-src", "golang-1.19-go", "golang-1.19-src", "golang-github-google-go-cmp-dev"],
    # `name/bookworm`: Debian's own build, even where the host has another source's nodejs installed
    "javascript": ["nodejs/bookworm", "libnode108/bookworm", "libc-ares2", "libicu72", "libuv1", "node-acorn",
                   "node-busboy", "node-cjs-module-lexer", "node-undici", "node-xtend"],
    # rustc 1.63 and cargo with gcc as the linker; Debian's crates (`librust-*-dev`) under
    # /usr/share/cargo/registry are the offline crate source (envbuilder.runners_rust)
    "rust": ["cargo", "rustc", "libstd-rust-1.63", "libstd-rust-dev", "libllvm14", "libgit2-1.5", "libhttp-parser2.9",
             "libmbedcrypto7", "libmbedx509-1", "libmbedtls14", "libz3-4", "libedit2", "libbsd0", "libicu72",
             "libxml2", "binutils", "binutils-common", "binutils-x86-64-linux-gnu", "libbinutils", "libctf0",
             "libctf-nobfd0", "libgprofng0", "libjansson4", "gcc", "gcc-12", "cpp", "cpp-12", "libgcc-12-dev",
             "libcc1-0", "libgomp1", "libitm1", "libatomic1", "libasan8", "liblsan0", "libtsan2", "libubsan1",
             "libquadmath0", "libisl23", "libmpfr6", "libmpc3", "librust-hex-dev"],
    # CMake 3.25 (ctest --output-junit), g++ 12, make and ninja; libfmt-dev a packaged library to link against
    "cpp": ["cmake", "cmake-data", "g++", "g++-12", "libstdc++-12-dev", "make", "ninja-build", "libarchive13",
            "libcurl4", "libjsoncpp25", "librhash0", "libuv1", "libicu72", "libxml2", "binutils", "binutils-common",
            "binutils-x86-64-linux-gnu", "libbinutils", "libctf0", "libctf-nobfd0", "libgprofng0", "libjansson4",
            "gcc", "gcc-12", "cpp", "cpp-12", "libgcc-12-dev", "libcc1-0", "libgomp1", "libitm1", "libatomic1",
            "libasan8", "liblsan0", "libtsan2", "libubsan1", "libquadmath0", "libisl23", "libmpfr6", "libmpc3",
            "libfmt9", "libfmt-dev"],
    "java": _JAVA_PACKAGES,
    "php": _PHP_PACKAGES,
}
# The Go module paths the go toolchain's `golang-*-dev` packages provide under /usr/share/gocode/src: a go.mod that
# requires only these (or nothing) builds in GOPATH mode; any other module is fetched by the host
# (envbuilder.go_fetch). A golang-*-dev package added above adds its module path here.
GO_DEBIAN_MODULES: dict[str, str] = {"github.com/google/go-cmp": "golang-github-google-go-cmp-dev"}
# What a recipe of the language sets for its runs: Go in GOPATH mode over Debian's library sources (go.mod is
# not read), its build cache in the run's scratch /tmp; a repository needing modules Debian lacks runs in module
# mode instead (envbuilder.go_fetch.GO_MODULE_ENV).
TOOLCHAIN_ENV: dict[str, dict[str, str]] = {
    "go": {"GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOCACHE": "/tmp/gocache", "GOFLAGS": "",
           "CGO_ENABLED": "0"},
    "javascript": {},
    # Rust: cargo's home (its config.toml names the offline crate source) in the home tree, which a validation
    # run may write; the build output in the run's scratch /tmp, so a checkout stays as the image has it.
    "rust": {"CARGO_HOME": "/home/tester/.cargo", "CARGO_TARGET_DIR": "/tmp/cargo-target",
             "CARGO_NET_OFFLINE": "true", "CARGO_TERM_COLOR": "never"},
    # C/C++: the build tree in the run's scratch /tmp (configured afresh by each run)
    "cpp": {"CTEST_OUTPUT_ON_FAILURE": "1"},
    # Maven's and PHP's own defaults; the recipes name the offline repository on their command lines
    "java": {},
    "php": {},
}


def supported_languages() -> list[str]:
    return sorted(TOOLCHAIN_PACKAGES)


def toolchain_image(config: Config, base_tag: str, language: str, *, log=lambda _line: None) -> str:
    """The base image with `language`'s toolchain, built on first use; ImageBuildFailed says why it could not."""
    packages = TOOLCHAIN_PACKAGES.get(language)
    if packages is None:
        raise ImageBuildFailed(f"no toolchain for {language} (known: {', '.join(supported_languages())})")
    debs = _download(config, language, packages)
    key = content_hash(TOOLCHAIN_VERSION, base_tag, [(p.name, sha256_bytes(p.read_bytes())) for p in debs], length=12)
    tag = f"tasksynth/toolchain:{language}-{key}"
    with image_lock(config, tag):
        if image_exists(tag):
            return tag
        log(f"building {tag} ({len(debs)} Debian packages)")
        with tempfile.TemporaryDirectory(prefix="tasksynth-toolchain-") as tmp:
            context = Path(tmp)
            (context / "debs").mkdir()
            for deb in debs:
                shutil.copy2(deb, context / "debs" / deb.name)
            (context / "Dockerfile").write_text("\n".join([
                f"FROM {base_tag}",
                "COPY debs /tmp/debs",
                "RUN dpkg -i /tmp/debs/*.deb && rm -rf /tmp/debs",
                f"LABEL {MANAGED_LABEL}=true org.tasksynth.layer=toolchain org.tasksynth.language={language}",
            ]) + "\n")
            result = docker("build", "--network", "none", "--force-rm", "-t", tag, str(context), check=False,
                            timeout=config.docker.build_timeout_s)
        if result.returncode != 0:
            tail = "\n".join(((result.stdout or "") + (result.stderr or "")).strip().splitlines()[-12:])
            raise ImageBuildFailed(f"installing the {language} toolchain failed:\n{tail}")
    return tag


def _download(config: Config, language: str, packages: list[str]) -> list[Path]:
    folder = config.home_path / "debs" / language
    folder.mkdir(parents=True, exist_ok=True)
    names = [_name(p) for p in packages]
    have = {p.name.split("_", 1)[0] for p in folder.glob("*.deb")}
    wanted = [p for p in packages if _name(p) not in have]
    if wanted:
        result = subprocess.run(["apt-get", "download", *wanted], cwd=folder, capture_output=True, text=True,
                                timeout=900)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-6:])
            raise ImageBuildFailed(f"apt-get download of the {language} toolchain failed (run `apt-get update`?):"
                                   f"\n{tail}")
    debs = sorted(p for p in folder.glob("*.deb") if p.name.split("_", 1)[0] in names)
    missing = sorted(set(names) - {p.name.split("_", 1)[0] for p in debs})
    if missing:
        raise ImageBuildFailed(f"Debian packages not downloaded: {', '.join(missing)}")
    return debs


def _name(package: str) -> str:
    return package.split("=", 1)[0].split("/", 1)[0]


def node_modules_image(config: Config, toolchain_tag: str, node_modules: Path, key: str,
                       reporters: Path | None = None, owner: str | None = None) -> str:
    """The JavaScript toolchain image with a project's dependencies at /opt/node_modules (fetched by the host,
    `envbuilder.npm_fetch`, `envbuilder.js_package_managers`), copied in by a build without network; the JUnit
    reporters the project lacks at /opt/js-reporters/node_modules; `owner` (`uid:gid`) owns the dependencies, so
    that lifecycle scripts run by the sandboxed user can write there. Tag: `tasksynth/toolchain:npm-<key>`."""
    extra = [] if reporters is None and owner is None else [reporters.parent.name if reporters else None, owner]
    tag = f"tasksynth/toolchain:npm-{content_hash(TOOLCHAIN_VERSION, toolchain_tag, key, *extra, length=12)}"
    copies = [(node_modules, "/opt/node_modules", owner)]
    if reporters is not None:
        copies.append((reporters, "/opt/js-reporters/node_modules", None))
    return _layer_of_folders(config, toolchain_tag, tag, copies, "javascript", "the project's node_modules")


def vendored_crates_image(config: Config, toolchain_tag: str, vendor: Path, key: str) -> str:
    """The Rust toolchain image with the crates the host fetched (`envbuilder.cargo_fetch`) at /opt/cargo-vendor."""
    return dependencies_image(config, toolchain_tag, vendor, "/opt/cargo-vendor", key, "rust")


def dependencies_image(config: Config, toolchain_tag: str, folder: Path, target: str, key: str, language: str) -> str:
    """The toolchain image with dependencies a trusted fetcher downloaded (`folder`) copied to `target` by a build
    without network; an existing folder there is merged (a fetched Maven repository goes over Debian's).
    Tag: `tasksynth/toolchain:<language>-deps-<key>`."""
    tag = f"tasksynth/toolchain:{language}-deps-{content_hash(TOOLCHAIN_VERSION, toolchain_tag, target, key, length=12)}"
    return _layer_of_folders(config, toolchain_tag, tag, [(folder, target, None)], language,
                             f"the fetched {language} dependencies")


def _layer_of_folders(config: Config, toolchain_tag: str, tag: str, copies: list[tuple[Path, str, str | None]],
                      language: str, what: str) -> str:
    """`tag`: `toolchain_tag` with each (host folder, target path, owner or None) copied in, by a build without
    network; built once (an existing tag is a cache hit). ImageBuildFailed names `what` could not be copied."""
    with image_lock(config, tag):
        if image_exists(tag):
            return tag
        with tempfile.TemporaryDirectory(prefix=f"tasksynth-{language}-layer-") as tmp:
            context = Path(tmp)
            lines = [f"FROM {toolchain_tag}"]
            for number, (folder, target, owner) in enumerate(copies):
                shutil.copytree(folder, context / f"folder{number}", symlinks=True)
                lines.append(f"COPY {f'--chown={owner} ' if owner else ''}folder{number} {target}")
            lines.append(f"LABEL {MANAGED_LABEL}=true org.tasksynth.layer=toolchain org.tasksynth.language={language}")
            (context / "Dockerfile").write_text("\n".join(lines) + "\n")
            result = docker("build", "--network", "none", "--force-rm", "-t", tag, str(context), check=False,
                            timeout=config.docker.build_timeout_s)
        if result.returncode != 0:
            tail = "\n".join(((result.stdout or "") + (result.stderr or "")).strip().splitlines()[-12:])
            raise ImageBuildFailed(f"copying {what} into an image failed:\n{tail}")
    return tag
