"""Java and PHP: one small fixture repository each, generated here, built and validated on the real engine;
Java (Debian's JDK 17 and Maven offline over /usr/share/maven-repo, commons-lang3 the third-party dependency,
Surefire's reports), PHP (Debian's PHP 8.2 and PHPUnit 9, symfony/yaml from Debian's php-symfony-yaml). Each
prints its build and validation seconds. Gradle is refused as `unsupported_build_system`; the report reader
refuses what it does not understand; the trusted fetchers fail clearly when their registry is unreachable, and a
PHP package Composer fetched from a loopback repository is what a third fixture's tests load."""

from __future__ import annotations

import json
import socket
import time

import pytest

from envbuilder.build import build_candidate
from envbuilder.composer_fetch import fetch_vendor
from envbuilder.errors import UnsupportedProject
from envbuilder.maven_fetch import fetch_maven_repository
from envbuilder.recipes import RecipeContext, detect_language, find_recipe
from envbuilder.runners import runner_for
from envbuilder.samples import SampleCommit
from envbuilder.validation import validate_instance
from envbuilder.wheelhouse import DependencyUnavailable
from tasksynth.docker.engine import docker
from tasksynth.docker.toolchains import dependencies_image
from tests.envbuilder.test_languages_docker import candidate_from_history, local_index  # noqa: F401
from tests.envbuilder.test_offline_build_docker import index_files  # noqa: F401
from verifiers.grading import JUNIT_MALFORMED, JUNIT_MISSING, OK

POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>com.example</groupId>
  <artifactId>names</artifactId>
  <version>1.0</version>
  <properties>
    <maven.compiler.release>17</maven.compiler.release>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>
  <dependencies>
    <dependency>
      <groupId>org.apache.commons</groupId>
      <artifactId>commons-lang3</artifactId>
      <version>3.12.0</version>
    </dependency>
    <dependency>
      <groupId>junit</groupId>
      <artifactId>junit</artifactId>
      <version>4.13.2</version>
      <scope>test</scope>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin><artifactId>maven-compiler-plugin</artifactId><version>3.10.1</version></plugin>
      <plugin><artifactId>maven-resources-plugin</artifactId><version>3.3.0</version></plugin>
      <plugin><artifactId>maven-surefire-plugin</artifactId><version>2.22.3</version></plugin>
    </plugins>
  </build>
</project>
"""
NAMES = """package com.example.names;

import org.apache.commons.lang3.StringUtils;

public final class Names {
    public static String initials(String name) {
%s
    }
}
"""
FIRST_LETTER = "        return StringUtils.upperCase(StringUtils.left(name, 1));"
EVERY_WORD = """        StringBuilder out = new StringBuilder();
        for (String word : StringUtils.split(name)) {
            out.append(StringUtils.left(word, 1));
        }
        return StringUtils.upperCase(out.toString());"""
NAMES_TEST = """package com.example.names;

import static org.junit.Assert.assertEquals;

import org.junit.Test;

public class NamesTest {
    @Test
    public void firstLetter() {
        assertEquals("A", Names.initials("ada"));
    }
%s}
"""
EVERY_WORD_TEST = """
    @Test
    public void everyWord() {
        assertEquals("AL", Names.initials("ada lovelace"));
    }
"""
MAIN, TEST = "src/main/java/com/example/names/Names.java", "src/test/java/com/example/names/NamesTest.java"


@pytest.mark.docker
def test_a_maven_repository_with_a_debian_packaged_dependency_builds_and_validates(tmp_path, flow_config,
                                                                                     local_index):  # noqa: F811
    config = flow_config(code__index_url=local_index)
    candidate = candidate_from_history(tmp_path, "names", [
        SampleCommit("init", {"pom.xml": POM, MAIN: NAMES % FIRST_LETTER, TEST: NAMES_TEST % ""}),
        SampleCommit("initials: one letter per word", {MAIN: NAMES % EVERY_WORD, TEST: NAMES_TEST % EVERY_WORD_TEST}),
    ], [TEST])

    started = time.monotonic()
    built = build_candidate(config, candidate)
    build_s = time.monotonic() - started
    assert built.ok, built.instance["detail"]
    assert (built.environment["language"], built.instance["test_runner"]) == ("java", "maven")
    assert built.environment["base_image"].startswith("tasksynth/toolchain:java-")
    assert built.instance["test_targets"] == ["com.example.names.NamesTest"]

    started = time.monotonic()
    outcome = validate_instance(config, candidate, built.instance, repeat=1, round_="languages")
    validate_s = time.monotonic() - started
    print(f"java: build {build_s:.1f} s, validation {validate_s:.1f} s")
    assert outcome.grade.valid, (outcome.grade, [(r.status, r.detail) for r in outcome.runs])
    assert list(outcome.grade.fail_to_pass) == ["com.example.names.NamesTest#everyWord"]
    assert list(outcome.grade.pass_to_pass) == ["com.example.names.NamesTest#firstLetter"]
    assert list(outcome.grade.pass_to_fail) == []

    # With a Maven repository configured, the trusted fetcher runs first: unreachable, the candidate says so.
    unreachable = f"http://127.0.0.1:{closed_port()}/maven2"
    refused = build_candidate(flow_config(code__index_url=local_index, code__maven_repository=unreachable), candidate)
    assert (refused.ok, refused.instance["reason"]) == (False, "install_failed")
    assert unreachable in refused.instance["detail"] and "go-offline" in refused.instance["detail"]
    # What a fetch brings is laid over Debian's repository, which stays whole.
    fetched = tmp_path / "fetched" / "org" / "example" / "extra" / "1.0"
    fetched.mkdir(parents=True)
    (fetched / "extra-1.0.pom").write_text("<project/>\n")
    layered = dependencies_image(config, built.environment["base_image"], tmp_path / "fetched",
                                 "/usr/share/maven-repo", "test-fetched", "java")
    listing = docker("run", "--rm", "--network", "none", layered, "ls", "/usr/share/maven-repo/org/example/extra/1.0",
                     "/usr/share/maven-repo/junit/junit/4.13.2").stdout
    assert "extra-1.0.pom" in listing and "junit-4.13.2.jar" in listing
    docker("rmi", layered, check=False)


COMPOSER = {"name": "example/settings", "require": {"php": ">=8.1", "symfony/yaml": "^5.4"},
            "require-dev": {"phpunit/phpunit": "^9.6"}, "autoload": {"psr-4": {"Settings\\": "src/"}},
            "autoload-dev": {"psr-4": {"Settings\\Tests\\": "tests/"}}}
LOADER = """<?php
namespace Settings;

use Symfony\\Component\\Yaml\\Yaml;

final class Loader
{
    public static function port(string $yaml): int
    {
        %s
    }
}
"""
LOADER_TEST = """<?php
namespace Settings\\Tests;

use PHPUnit\\Framework\\TestCase;
use Settings\\Loader;

final class LoaderTest extends TestCase
{
    public function testPort(): void
    {
        $this->assertSame(8080, Loader::port("port: 8080\\n"));
    }
%s}
"""
PHPUNIT_XML = """<?xml version="1.0" encoding="UTF-8"?>
<phpunit bootstrap="tests/bootstrap.php" colors="false">
  <testsuites><testsuite name="unit"><directory>tests</directory></testsuite></testsuites>
</phpunit>
"""
DEFAULT_PORT_TEST = """
    public function testDefaultPort(): void
    {
        $this->assertSame(80, Loader::port(HOST_ONLY_YAML));  // from the project's own bootstrap
    }
"""


@pytest.mark.docker
def test_a_php_repository_with_a_debian_packaged_dependency_builds_and_validates(tmp_path, flow_config,
                                                                                   local_index):  # noqa: F811
    config = flow_config(code__index_url=local_index)
    candidate = candidate_from_history(tmp_path, "settings", [
        SampleCommit("init", {"composer.json": json.dumps(COMPOSER, indent=2) + "\n",
                              "src/Loader.php": LOADER % "return Yaml::parse($yaml)['port'];",
                              "tests/LoaderTest.php": LOADER_TEST % "", "phpunit.xml.dist": PHPUNIT_XML,
                              "tests/bootstrap.php": "<?php\nconst HOST_ONLY_YAML = \"host: example.org\\n\";\n"}),
        SampleCommit("port: 80 when the file names none",
                     {"src/Loader.php": LOADER % "return Yaml::parse($yaml)['port'] ?? 80;",
                      "tests/LoaderTest.php": LOADER_TEST % DEFAULT_PORT_TEST}),
    ], ["tests/LoaderTest.php"])

    started = time.monotonic()
    built = build_candidate(config, candidate)
    build_s = time.monotonic() - started
    assert built.ok, built.instance["detail"]
    assert (built.environment["language"], built.instance["test_runner"]) == ("php", "phpunit")
    assert built.environment["base_image"].startswith("tasksynth/toolchain:php-")

    started = time.monotonic()
    outcome = validate_instance(config, candidate, built.instance, repeat=1, round_="languages")
    validate_s = time.monotonic() - started
    print(f"php: build {build_s:.1f} s, validation {validate_s:.1f} s")
    assert outcome.grade.valid, (outcome.grade, [(r.status, r.detail) for r in outcome.runs])
    assert list(outcome.grade.fail_to_pass) == ["Settings\\Tests\\LoaderTest::testDefaultPort"]
    assert list(outcome.grade.pass_to_pass) == ["Settings\\Tests\\LoaderTest::testPort"]
    assert list(outcome.grade.pass_to_fail) == []

    # With a Composer repository configured, the trusted fetcher runs first and its failure is the candidate's.
    unreachable = f"http://127.0.0.1:{closed_port()}"
    refused = build_candidate(flow_config(code__index_url=local_index, code__composer_repository=unreachable),
                              candidate)
    assert (refused.ok, refused.instance["reason"]) == (False, "install_failed")
    assert "composer" in refused.instance["detail"] and "Composer packages" in refused.instance["detail"]


# ------------------------------------------------------------------------------------------ without Docker

def test_java_and_php_are_detected_and_a_gradle_build_ends_unsupported_build_system(tmp_path):
    from tasksynth.config import load_config
    from tests.envbuilder.test_recipes import AVAILABLE, tree_of

    maven = tree_of(tmp_path, {"pom.xml": POM, MAIN: NAMES % FIRST_LETTER}, name="mvn")
    assert detect_language(maven) == "java"
    recipe = find_recipe(maven, RecipeContext("t/mvn", AVAILABLE), language="java")
    assert (recipe.test_runner, recipe.language) == ("maven", "java")
    assert "pom.xml" in recipe.dependency_files and "mvn -o" in recipe.test_command
    php = tree_of(tmp_path, {"composer.json": json.dumps(COMPOSER), "src/Loader.php": LOADER % "return 1;"},
                  name="php")
    assert detect_language(php) == "php"
    assert find_recipe(php, RecipeContext("t/php", AVAILABLE), language="php").test_runner == "phpunit"

    gradle_files = {"build.gradle": "plugins { id 'java' }\n", "src/main/java/A.java": "class A {}\n"}
    assert detect_language(tree_of(tmp_path, gradle_files, name="gradle")) == "java"
    candidate = candidate_from_history(tmp_path, "gradlew", [
        SampleCommit("init", {**gradle_files, "src/test/java/ATest.java": "class ATest {}\n"}),
        SampleCommit("fix", {"src/main/java/A.java": "class A { int x; }\n",
                             "src/test/java/ATest.java": "class ATest { int y; }\n"})], ["src/test/java/ATest.java"])
    config = load_config(environ={"TASKSYNTH_HOME": str(tmp_path / "home")})
    built = build_candidate(config, candidate)
    assert (built.ok, built.instance["reason"]) == (False, "unsupported_build_system")
    assert "Gradle" in built.instance["detail"] and "build.gradle" in built.instance["detail"]


# Real Surefire 2.22.3 output (the fixture's first run, its <properties> trimmed), and a second module's file.
SUREFIRE_REPORT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuite xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="https://maven.apache.org/surefire/maven-surefire-plugin/xsd/surefire-test-report.xsd" name="com.example.calc.NamesTest" time="0.277" tests="2" errors="0" skipped="0" failures="1">
  <properties>
    <property name="java.specification.version" value="17"/>
  </properties>
  <testcase name="firstLetter" classname="com.example.calc.NamesTest" time="0.012"/>
  <testcase name="everyWord" classname="com.example.calc.NamesTest" time="0.004">
    <failure message="expected:&lt;A[L]&gt; but was:&lt;A[]&gt;" type="org.junit.ComparisonFailure"><![CDATA[org.junit.ComparisonFailure: expected:<A[L]> but was:<A[]>
	at com.example.calc.NamesTest.everyWord(NamesTest.java:15)
]]></failure>
  </testcase>
</testsuite>
"""
SECOND_MODULE = """<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="com.example.io.ReadTest" time="0.1" tests="2" errors="1" skipped="1" failures="0">
  <testcase name="reads" classname="com.example.io.ReadTest" time="0.05">
    <error message="boom" type="java.io.IOException">java.io.IOException: boom</error>
  </testcase>
  <testcase name="later" classname="com.example.io.ReadTest" time="0"><skipped/></testcase>
</testsuite>
"""
# Gradle's JUnit XML format (build/test-results/test/TEST-<class>.xml, JUnit 5 names with their parentheses),
# written here by hand: no Gradle runs on these machines to produce one.
GRADLE_REPORT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="com.example.NamesTest" tests="2" skipped="0" failures="1" errors="0" timestamp="2024-05-01T10:00:00" hostname="build" time="0.031">
  <properties/>
  <testcase name="everyWord()" classname="com.example.NamesTest" time="0.021">
    <failure message="org.opentest4j.AssertionFailedError: expected: &lt;AL&gt; but was: &lt;A&gt;" type="org.opentest4j.AssertionFailedError">org.opentest4j.AssertionFailedError: expected: &lt;AL&gt; but was: &lt;A&gt;
	at com.example.NamesTest.everyWord(NamesTest.java:14)
</failure>
  </testcase>
  <testcase name="firstLetter()" classname="com.example.NamesTest" time="0.002"/>
  <system-out><![CDATA[]]></system-out>
  <system-err><![CDATA[]]></system-err>
</testsuite>
"""


def joined(*files: tuple[str, str]) -> str:
    """Report files joined as the runner's shell joins them in the container."""
    from verifiers.junit_files import FILE_MARKER

    return "".join(f"{FILE_MARKER}{name} -->\n{text}\n" for name, text in files)


def test_surefire_and_gradle_reports_are_read_as_class_hash_method():
    runner = runner_for("maven")
    status, _, outcomes = runner.read_report(1, joined(
        ("./target/surefire-reports/TEST-com.example.calc.NamesTest.xml", SUREFIRE_REPORT),
        ("./io/target/surefire-reports/TEST-com.example.io.ReadTest.xml", SECOND_MODULE)), [])
    assert status == OK
    assert {k: v.outcome for k, v in outcomes.items()} == {
        "com.example.calc.NamesTest#firstLetter": "passed", "com.example.calc.NamesTest#everyWord": "failed",
        "com.example.io.ReadTest#reads": "error", "com.example.io.ReadTest#later": "skipped"}
    assert "expected:<A[L]>" in outcomes["com.example.calc.NamesTest#everyWord"].message

    status, _, outcomes = runner.read_report(1, joined(("./build/test-results/test/TEST-com.example.NamesTest.xml",
                                                        GRADLE_REPORT)), [])
    assert status == OK
    assert {k: v.outcome for k, v in outcomes.items()} == {"com.example.NamesTest#everyWord()": "failed",
                                                           "com.example.NamesTest#firstLetter()": "passed"}


def test_the_maven_runner_selects_the_touched_test_classes_and_gathers_every_module_s_reports():
    runner = runner_for("maven")
    test_patch = ("diff --git a/core/src/test/java/com/x/ATest.java b/core/src/test/java/com/x/ATest.java\n"
                  "--- a/core/src/test/java/com/x/ATest.java\n+++ b/core/src/test/java/com/x/ATest.java\n"
                  "@@ -1 +1 @@\n-a\n+b\n")
    targets = runner.select_tests([], test_patch, "", "touched")
    assert targets == ["com.x.ATest"]
    command = runner.command("mvn -o test", targets, "/io/junit.xml")
    assert "-Dtest=com.x.ATest" in command and "*/target/surefire-reports/TEST-*.xml" in command
    assert command.startswith("(") and command.endswith("exit $code)")  # Maven's exit code, whatever follows
    assert runner.select_tests([], test_patch, "", "all") == []


def test_a_report_the_readers_do_not_understand_is_refused_not_guessed():
    maven, phpunit = runner_for("maven"), runner_for("phpunit")
    testng = '<?xml version="1.0"?>\n<testng-results skipped="0" failed="1" total="1"><suite name="s"/></testng-results>'
    status, detail, outcomes = maven.read_report(1, joined(("./target/surefire-reports/testng-results.xml",
                                                            testng)), [])
    assert (status, outcomes) == (JUNIT_MALFORMED, {})
    assert "testng-results.xml" in detail and "<testng-results>" in detail
    odd = SUREFIRE_REPORT.replace("<failure ", "<verdict ").replace("</failure>", "</verdict>")
    status, detail, _ = maven.read_report(1, joined(("./target/surefire-reports/TEST-x.xml", odd)), [])
    assert status == JUNIT_MALFORMED and "<verdict>" in detail and "not understood" in detail
    status, detail, _ = maven.read_report(1, "", [])
    assert status == JUNIT_MISSING and "no Surefire report" in detail
    status, detail, _ = phpunit.read_report(2, "<testsuites><testsuite name='x'><case name='t'/></testsuite>"
                                               "</testsuites>", [])
    assert status == JUNIT_MALFORMED and "<case>" in detail


# Real PHPUnit 9.6.7 output (the fixture's first run): suites nested by folder and class.
PHPUNIT_REPORT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="/testbed/tests" tests="2" assertions="1" errors="1" warnings="0" failures="0" skipped="0" time="0.030760">
    <testsuite name="Settings\\Tests\\LoaderTest" file="/testbed/tests/LoaderTest.php" tests="2" assertions="1" errors="1" warnings="0" failures="0" skipped="0" time="0.030760">
      <testcase name="testPort" class="Settings\\Tests\\LoaderTest" classname="Settings.Tests.LoaderTest" file="/testbed/tests/LoaderTest.php" line="9" assertions="1" time="0.030379"/>
      <testcase name="testDefaultPort" class="Settings\\Tests\\LoaderTest" classname="Settings.Tests.LoaderTest" file="/testbed/tests/LoaderTest.php" line="14" assertions="0" time="0.000381">
        <error type="PHPUnit\\Framework\\Error\\Warning">Settings\\Tests\\LoaderTest::testDefaultPort
Undefined array key "port"
</error>
      </testcase>
    </testsuite>
  </testsuite>
</testsuites>
"""


def test_phpunit_reports_are_read_as_class_colons_method_and_a_fatal_error_is_a_crash():
    runner = runner_for("phpunit")
    status, _, outcomes = runner.read_report(2, PHPUNIT_REPORT, ["tests/LoaderTest.php"])
    assert status == OK
    assert {k: v.outcome for k, v in outcomes.items()} == {"Settings\\Tests\\LoaderTest::testPort": "passed",
                                                           "Settings\\Tests\\LoaderTest::testDefaultPort": "error"}
    assert runner.read_report(255, PHPUNIT_REPORT, [])[0] == "tests_crashed"
    assert runner.command("phpunit", ["tests/LoaderTest.php"], "/io/junit.xml") == \
        "phpunit --log-junit /io/junit.xml tests/LoaderTest.php"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_maven_fetcher_fails_clearly_when_its_repository_is_unreachable(tmp_path):
    import shutil

    from tasksynth.config import load_config
    from tests.envbuilder.test_recipes import tree_of

    config = load_config(environ={"TASKSYNTH_HOME": str(tmp_path / "home")})
    url = f"http://127.0.0.1:{closed_port()}/maven2"
    with pytest.raises(UnsupportedProject, match="build extensions"):
        fetch_maven_repository(config, tree_of(tmp_path, {"pom.xml": POM.replace(
            "<build>", "<build><extensions><extension><groupId>x</groupId><artifactId>y</artifactId>"
                       "<version>1</version></extension></extensions>")}, name="ext"), url)
    with pytest.raises(DependencyUnavailable) as failure:
        fetch_maven_repository(config, tree_of(tmp_path, {"pom.xml": POM}, name="plain"), url, timeout_s=120)
    if shutil.which("mvn") is None:
        assert "mvn is not installed" in str(failure.value)
    else:
        assert url in str(failure.value) and "go-offline" in str(failure.value)
        assert "maven-dependency-plugin" in str(failure.value)  # Maven's own line: what could not be resolved
    assert not list((tmp_path / "home" / "maven").glob("*/repository"))  # nothing half-fetched is kept


def test_the_composer_fetcher_fails_clearly_when_its_repository_is_unreachable(tmp_path):
    import shutil

    from tasksynth.config import load_config
    from tests.envbuilder.test_recipes import tree_of

    config = load_config(environ={"TASKSYNTH_HOME": str(tmp_path / "home")})
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(UnsupportedProject, match="no composer.json"):
        fetch_vendor(config, tree_of(tmp_path, {"src/A.php": "<?php\n"}, name="bare"), url)
    with pytest.raises(DependencyUnavailable) as failure:
        fetch_vendor(config, tree_of(tmp_path, {"composer.json": json.dumps(COMPOSER)}, name="app"), url,
                     timeout_s=120)
    if shutil.which("composer") is None:
        assert "composer is not installed on this host" in str(failure.value)
    else:
        assert url in str(failure.value) and "composer install" in str(failure.value)
        assert f"{url}/packages.json" in str(failure.value)  # the configured repository, in place of packagist.org
    assert not list((tmp_path / "home" / "composer").glob("*/vendor"))


# ------------------------------------------------------------------------------------------ a fetched dependency

GREETER = """<?php
namespace Acme\\Greet;

final class Greeter
{
    public static function hello(string $name): string
    {
        return "Hello, " . trim($name) . "!";
    }
}
"""
WELCOME = """<?php
namespace Shop;

use Acme\\Greet\\Greeter;

final class Welcome
{
    public static function line(string $name): string
    {
        return %s;
    }
}
"""
WELCOME_TEST = """<?php
namespace Shop\\Tests;

use PHPUnit\\Framework\\TestCase;
use Shop\\Welcome;

final class WelcomeTest extends TestCase
{
    public function testGreets(): void
    {
        $this->assertSame("Hello, Ada!", Welcome::line("Ada"));
    }
%s}
"""
GUEST_TEST = """
    public function testGuest(): void
    {
        $this->assertSame("Hello, guest!", Welcome::line(""));
    }
"""


@pytest.fixture
def composer_repository(tmp_path):
    """A Composer repository on 127.0.0.1 (packages.json and a tar dist) holding acme/greet 1.0.0, which no
    Debian package provides."""
    import http.server
    import io
    import tarfile
    import threading
    from functools import partial

    root = tmp_path / "composer-repo"
    root.mkdir()
    with tarfile.open(root / "greet-1.0.0.tar", "w") as archive:
        data = GREETER.encode()
        member = tarfile.TarInfo("greet/src/Greeter.php")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(root)))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    (root / "packages.json").write_text(json.dumps({"packages": {"acme/greet": {"1.0.0": {
        "name": "acme/greet", "version": "1.0.0", "type": "library",
        "dist": {"type": "tar", "url": f"{url}/greet-1.0.0.tar"},
        "autoload": {"psr-4": {"Acme\\Greet\\": "src/"}}}}}}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield url
    server.shutdown()


@pytest.mark.docker
def test_a_php_dependency_fetched_by_composer_from_a_loopback_repository_is_what_the_tests_use(
        tmp_path, flow_config, local_index, composer_repository):  # noqa: F811
    import shutil

    if shutil.which("composer") is None:
        pytest.skip("composer is not installed on this host (make fetchers)")
    config = flow_config(code__index_url=local_index, code__composer_repository=composer_repository)
    manifest = {"name": "example/shop", "require": {"acme/greet": "^1.0"},
                "autoload": {"psr-4": {"Shop\\": "src/"}}, "autoload-dev": {"psr-4": {"Shop\\Tests\\": "tests/"}}}
    candidate = candidate_from_history(tmp_path, "shop", [
        SampleCommit("init", {"composer.json": json.dumps(manifest, indent=2) + "\n",
                              "src/Welcome.php": WELCOME % "Greeter::hello($name)",
                              "tests/WelcomeTest.php": WELCOME_TEST % ""}),
        SampleCommit("welcome: a guest without a name",
                     {"src/Welcome.php": WELCOME % "Greeter::hello($name === '' ? 'guest' : $name)",
                      "tests/WelcomeTest.php": WELCOME_TEST % GUEST_TEST}),
    ], ["tests/WelcomeTest.php"])

    built = build_candidate(config, candidate)
    assert built.ok, built.instance["detail"]
    assert built.environment["base_image"].startswith("tasksynth/toolchain:php-deps-")
    assert list((config.home_path / "composer").glob("*/vendor/acme/greet/src/Greeter.php"))
    outcome = validate_instance(config, candidate, built.instance, repeat=1, round_="languages")
    assert outcome.grade.valid, (outcome.grade, [(r.status, r.detail) for r in outcome.runs])
    assert list(outcome.grade.fail_to_pass) == ["Shop\\Tests\\WelcomeTest::testGuest"]
    assert list(outcome.grade.pass_to_pass) == ["Shop\\Tests\\WelcomeTest::testGreets"]
    # the repository's port is new each run, and so are these tags: not left behind
    docker("rmi", built.instance["image"], built.environment["image"], built.environment["base_image"], check=False)
