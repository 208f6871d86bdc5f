"""Java and PHP: one small fixture repository each, generated here, built and validated on the real engine;
Java (Debian's JDK 17 and Maven offline over /usr/share/maven-repo, commons-lang3 the third-party dependency,
Surefire's reports), PHP (Debian's PHP 8.2 and PHPUnit 9, symfony/yaml from Debian's php-symfony-yaml). Each
prints its build and validation seconds. Gradle is refused as `unsupported_build_system`; the report reader
refuses what it does not understand; the trusted fetchers fail clearly when their registry is unreachable."""

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
from envbuilder.repos import SourceTree
from envbuilder.runners import runner_for
from envbuilder.samples import SampleCommit
from envbuilder.validation import validate_instance
from envbuilder.wheelhouse import DependencyUnavailable
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
DEFAULT_PORT_TEST = """
    public function testDefaultPort(): void
    {
        $this->assertSame(80, Loader::port("host: example.org\\n"));
    }
"""


@pytest.mark.docker
def test_a_php_repository_with_a_debian_packaged_dependency_builds_and_validates(tmp_path, flow_config,
                                                                                   local_index):  # noqa: F811
    config = flow_config(code__index_url=local_index)
    candidate = candidate_from_history(tmp_path, "settings", [
        SampleCommit("init", {"composer.json": json.dumps(COMPOSER, indent=2) + "\n",
                              "src/Loader.php": LOADER % "return Yaml::parse($yaml)['port'];",
                              "tests/LoaderTest.php": LOADER_TEST % ""}),
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
