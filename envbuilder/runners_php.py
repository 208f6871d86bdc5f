"""The PHP test runner: PHPUnit (Debian's, 9.6) with `--log-junit`, read with junitparser.

Dependencies come from Debian's `php-*` packages, installed under /usr/share/php by namespace
(`Symfony\\Component\\Yaml\\Yaml` is `/usr/share/php/Symfony/Component/Yaml/Yaml.php`); no Packagist is
reachable. The recipe writes `AUTOLOADER` into the environment: a vendor/autoload.php when there is one (the
project's own, or the one `envbuilder.composer_fetch` put at /opt/vendor); the PSR-4/PSR-0 maps of the project's
composer.json (autoload and autoload-dev); Debian's library folder; then the bootstrap file the project's
phpunit.xml names, unless it is only vendor/autoload.php. PHPUnit runs with it as its bootstrap.

Test ids are `<class>::<method>` (`Settings\\Tests\\LoaderTest::testPort`), the form `phpunit --filter` takes.
Targets are the test files the test patch touches (`*Test.php`, tests/); PHPUnit 9 takes one path, so one
target is run alone and several run the whole suite. PHPUnit exits 0 (passed), 1 (failures) or 2 (errors);
another code (255: a fatal error) is a crash.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

from envbuilder.recipes import Recipe, RecipeContext, dependency_files
from envbuilder.repos import SourceTree
from envbuilder.runners import REPORT_PATH, RUNNERS, TestRunner
from envbuilder.sources.patches import file_diffs
from verifiers.grading import JUNIT_MALFORMED, JUNIT_MISSING, OK, TESTS_CRASHED
from verifiers.junit import JUnitError, TestOutcome
from verifiers.junit_files import parse_junit_files, phpunit_test_id

AUTOLOADER_PATH = "/home/tester/.tasksynth/autoload.php"
PHPUNIT_COMMAND = f"phpunit --do-not-cache-result --bootstrap {AUTOLOADER_PATH}"
_TEST_FILE = re.compile(r"(^|/)(tests?/.*|[^/]+Test)\.php$")
AUTOLOADER = r"""<?php
// tasksynth: a vendor/ folder first (the project's, or one fetched at /opt/vendor); then the project's classes (composer.json's PSR-4 and PSR-0 maps,
// autoload and autoload-dev); then Debian's PHP libraries under /usr/share/php, laid out by namespace.
foreach ([getcwd() . '/vendor/autoload.php', '/opt/vendor/autoload.php'] as $vendor) {
    if (is_file($vendor)) {
        require $vendor;
        break;
    }
}
spl_autoload_register(static function (string $class): void {
    static $composer = null;
    $root = getcwd();
    $composer ??= is_file("$root/composer.json") ? (json_decode(file_get_contents("$root/composer.json"), true) ?: []) : [];
    $relative = str_replace('\\', '/', $class) . '.php';
    foreach (['autoload', 'autoload-dev'] as $section) {
        foreach (($composer[$section]['psr-4'] ?? []) as $prefix => $dirs) {
            if ($prefix !== '' && strncmp($class, $prefix, strlen($prefix)) !== 0) {
                continue;
            }
            $rest = str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            foreach ((array) $dirs as $dir) {
                if (is_file($file = "$root/" . rtrim($dir, '/') . "/$rest")) {
                    require $file;
                    return;
                }
            }
        }
        foreach (($composer[$section]['psr-0'] ?? []) as $prefix => $dirs) {
            foreach ((array) $dirs as $dir) {
                if (is_file($file = "$root/" . rtrim($dir, '/') . "/$relative")) {
                    require $file;
                    return;
                }
            }
        }
    }
    if (is_file($file = "/usr/share/php/$relative")) {
        require $file;
    }
});
// The project's own bootstrap from its PHPUnit configuration (this file replaces it as --bootstrap), unless it is
// only Composer's autoloader.
foreach (['phpunit.xml', 'phpunit.xml.dist'] as $configuration) {
    if (is_file($configuration)) {
        if (preg_match('/\bbootstrap="([^"]+)"/', file_get_contents($configuration), $found)
            && !str_ends_with($found[1], 'vendor/autoload.php') && is_file($found[1])) {
            require_once $found[1];
        }
        break;
    }
}
"""


def autoloader_step() -> str:
    """The env step that writes AUTOLOADER (as the run user, into its home, kept by the layer)."""
    return (f"mkdir -p {shlex.quote(AUTOLOADER_PATH.rsplit('/', 1)[0])} && "
            f"printf '%s' {shlex.quote(AUTOLOADER)} > {AUTOLOADER_PATH}")


class PhpunitRunner(TestRunner):
    name = "phpunit"
    language = "php"
    OK_EXIT_CODES = {0: "all passed", 1: "some tests failed", 2: "some tests errored"}

    def select_tests(self, files: Iterable[str], test_patch: str, patch: str, scope: str) -> list[str]:
        if scope == "all":
            return []
        return list(dict.fromkeys(p.path for p in file_diffs(test_patch)
                                  if _TEST_FILE.search(p.path) and "\n+++ /dev/null" not in p.text))

    def command(self, base_command: str, targets: list[str], report_path: str = REPORT_PATH) -> str:
        target = shlex.quote(targets[0]) if len(targets) == 1 else ""
        return " ".join(filter(None, [base_command, "--log-junit", shlex.quote(report_path), target]))

    def read_report(self, exit_code: int | None, report: str | None,
                    targets: list[str]) -> tuple[str, str, dict[str, TestOutcome]]:
        if exit_code not in self.OK_EXIT_CODES:
            return TESTS_CRASHED, f"phpunit exited with {exit_code} (a fatal error or a usage error)", {}
        if report is None or not report.strip():
            return JUNIT_MISSING, "phpunit wrote no JUnit report", {}
        try:
            outcomes = parse_junit_files(report, phpunit_test_id)
        except JUnitError as exc:
            return JUNIT_MALFORMED, str(exc), {}
        return OK, self.OK_EXIT_CODES[exit_code], outcomes


def php_recipe(tree: SourceTree, context: RecipeContext) -> Recipe:
    """Debian's PHP and PHPUnit, the project's classes and Debian's libraries through AUTOLOADER."""
    return Recipe(env_steps=["php --version", autoloader_step()], test_runner=PhpunitRunner.name,
                  test_command=PHPUNIT_COMMAND, language="php", dependency_files=dependency_files(tree),
                  notes=["composer.json or phpunit.xml found: PHP, tests by Debian's PHPUnit 9 (--log-junit)",
                         "the project's classes by its composer.json autoload maps, dependencies from Debian's "
                         "php-* packages under /usr/share/php"])


RUNNERS.setdefault(PhpunitRunner.name, PhpunitRunner())
