"""Runtime TOML files: the shipped ones load, invalid ones are reported by file and field."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from sandboxd.cli import image_source
from sandboxd.engine.agent import build_agent
from sandboxd.engine.agent._build import CHECKS_DIR
from sandboxd.engine.oci import AGENT_DIR
from sandboxd.runtimes import (
    CHECKS_PLACEHOLDER,
    SANDBOX_CHECKS_DIR,
    RuntimeConfigError,
    SyntaxCheckKind,
    load_runtimes,
)
from tests.helpers import SHIPPED_RUNTIMES, shipped_runtimes

SYNTAX_CHECK = """\
[syntax_check]
kind = "command"
command = ["python3", "-m", "py_compile", "main.py"]
"""

VALID = """
name = "python"
image = "example/python:1"
source_file = "main.py"
run = ["python3", "main.py"]
version_command = ["python3", "--version"]
[limits]
timeout = 5
max_timeout = 10
memory_mib = 128
pids = 32
[build]
packages = ["python3-minimal"]
{syntax_check}[conformance]
hello = "print('hello')"
echo_stdin = "import sys; sys.stdout.write(sys.stdin.read())"
read_env = "import os; print(os.environ['SANDBOXD_CONFORMANCE'])"
exit_3 = "raise SystemExit(3)"
utf8 = "print('é')"
runtime_error = "1/0"
infinite_loop = "while True: pass"
syntax_error = "print('unclosed'"
""".replace("{syntax_check}", SYNTAX_CHECK)


ASKED_FOR = {
    "python", "javascript", "typescript", "go", "ruby", "bash", "c", "cpp", "rust", "java", "csharp", "php",
    "perl", "lua", "r", "haskell", "ocaml", "pascal", "fortran", "kotlin", "elixir", "erlang", "commonlisp",
    "scheme", "sqlite",
}  # fmt: skip


def test_shipped_runtimes_load() -> None:
    """At least 24 runtimes load, among them every language users ask for most."""
    registry = shipped_runtimes()
    assert len(registry) >= 24
    assert {r.name for r in registry} >= ASKED_FOR
    compiled = {r.name for r in registry if r.compiled}
    assert {"c", "cpp", "go", "rust", "java", "haskell", "kotlin", "typescript"} <= compiled
    assert "python" not in compiled
    assert registry.get("golang") is registry.get("go")
    assert registry.get("PY") is registry.get("python")
    assert registry.get("cobol") is None


def test_every_problem_in_every_file_is_reported(tmp_path: Path) -> None:
    """All problems come at once, each naming its file and field."""
    (tmp_path / "a.toml").write_text(
        VALID.replace('run = ["python3", "main.py"]', 'run = "python3 main.py"')
        .replace("timeout = 5", "timeout = 0")
        .replace('source_file = "main.py"', 'source_file = "../main.py"\nshell = true')
    )
    (tmp_path / "b.toml").write_text("name = [")
    with pytest.raises(RuntimeConfigError) as caught:
        load_runtimes(tmp_path)
    problems = caught.value.problems
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    assert f"{a}: run: expected a list" in problems
    assert f"{a}: limits.timeout: must be positive, got 0.0" in problems
    assert f"{a}: unknown field: shell" in problems
    assert any(p.startswith(f"{b}: not valid TOML") for p in problems)


def test_semantic_problems_name_the_field(tmp_path: Path) -> None:
    """Checks across fields (default above maximum, bad names) name the field at fault."""
    (tmp_path / "a.toml").write_text(
        VALID.replace("timeout = 5", "timeout = 50").replace(
            'source_file = "main.py"', 'source_file = "a/b.py"'
        )
    )
    with pytest.raises(RuntimeConfigError) as caught:
        load_runtimes(tmp_path)
    problems = caught.value.problems
    assert f"{tmp_path / 'a.toml'}: limits.timeout: must not exceed max_timeout (10.0)" in problems


def test_compiled_runtime_needs_a_compile_error_snippet(tmp_path: Path) -> None:
    """A runtime with a compile step must say how its compiler fails, for the conformance suite."""
    (tmp_path / "a.toml").write_text(
        VALID.replace('run = ["python3", "main.py"]', 'run = ["./a"]\ncompile = ["cc", "x.c"]').replace(
            SYNTAX_CHECK, ""
        )
    )
    with pytest.raises(RuntimeConfigError) as caught:
        load_runtimes(tmp_path)
    assert caught.value.problems == [
        f"{tmp_path / 'a.toml'}: conformance.compile_error: required for a runtime with a compile step"
    ]


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    """Two files claiming the same name or alias is an error."""
    (tmp_path / "a.toml").write_text(VALID)
    (tmp_path / "b.toml").write_text(VALID.replace('name = "python"', 'name = "py3"\naliases = ["python"]'))
    with pytest.raises(RuntimeConfigError, match="'python' is already used"):
        load_runtimes(tmp_path)


def test_empty_directory_is_refused(tmp_path: Path) -> None:
    """A runtimes directory without TOML files stops start-up."""
    with pytest.raises(RuntimeConfigError, match="no runtime files"):
        load_runtimes(tmp_path)


def test_build_key_follows_the_recipe() -> None:
    """Changing packages or files changes the key that marks an image current; their order does not."""
    registry = shipped_runtimes()
    python, ruby = registry.get("python"), registry.get("ruby")
    assert python is not None
    assert ruby is not None
    recipe = python.build
    key = recipe.build_key()
    reloaded = shipped_runtimes().get("python")
    assert reloaded is not None
    assert reloaded.build is not recipe
    assert reloaded.build.build_key() == key
    assert attrs.evolve(recipe, packages=recipe.packages[::-1]).build_key() == key
    assert attrs.evolve(recipe, packages=(*recipe.packages, "strace")).build_key() != key
    assert attrs.evolve(recipe, files={**recipe.files, "/etc/motd": "hello"}).build_key() != key
    assert attrs.evolve(recipe, suite="bookworm").build_key() != key
    assert attrs.evolve(recipe, pip={"numpy": "2.5.5"}).build_key() != key
    assert attrs.evolve(recipe, npm={"lodash": "4.18.1"}).build_key() != key
    assert ruby.build.build_key() != key


def test_java_files_are_named_after_the_public_class() -> None:
    """Java's file and class names come from the public top-level class; without one, Main."""
    java = shipped_runtimes().get("java")
    assert java is not None
    hello_world = java.program_for(
        "import java.util.*;\npublic final class HelloWorld {\n  public static class X {}\n}"
    )
    assert hello_world.source_file == "HelloWorld.java"
    assert hello_world.compile[-1] == "HelloWorld.java"
    assert hello_world.run[-1] == "HelloWorld"
    nested_first = java.program_for(
        "class A {\n    public static class Inner {}\n}\npublic class Solution {}\n"
    )
    assert nested_first.source_file == "Solution.java"
    assert java.program_for("class Main {}").source_file == "Main.java"


def test_an_entry_name_that_is_no_identifier_falls_back_to_the_default(tmp_path: Path) -> None:
    """A matched name that could be a path or an option never names a file or reaches a command."""
    (tmp_path / "x.toml").write_text(
        VALID.replace('source_file = "main.py"', 'source_file = "{entry}.py"')
        + "[entry]\npatterns = ['^#name: (.+)$']\ndefault = \"main\"\n"
    )
    runtime = load_runtimes(tmp_path).get("python")
    assert runtime is not None
    assert runtime.program_for("#name: good_name\n").source_file == "good_name.py"
    for hostile in ("../../etc/passwd", "-rf", "a b", "x;rm", ""):
        assert runtime.program_for(f"#name: {hostile}\n").source_file == "main.py", hostile


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ('source_file = "{entry}.py"', "source_file: uses {entry}, which needs an [entry] table"),
        ("[entry]\npatterns = ['no group']\ndefault = \"main\"", "must have exactly one group"),
        ("[entry]\npatterns = ['(unclosed']\ndefault = \"main\"", "is not a regular expression"),
        ("[entry]\npatterns = ['(x)']\ndefault = \"../up\"", "entry.default: must be an identifier"),
    ],
)
def test_invalid_entry_points_are_reported(tmp_path: Path, change: str, problem: str) -> None:
    """A placeholder without an [entry] table, or a bad pattern or default, names the field."""
    text = (
        VALID.replace('source_file = "main.py"', change)
        if change.startswith("source_file")
        else VALID + change
    )
    (tmp_path / "x.toml").write_text(text)
    with pytest.raises(RuntimeConfigError) as raised:
        load_runtimes(tmp_path)
    assert problem in str(raised.value)


def test_every_shipped_interpreted_runtime_says_how_it_finds_syntax_errors() -> None:
    """Each runtime without a compile step declares its syntax check; in-process ones load shipped files."""
    checks = build_agent(Path("/tmp/sandboxd-test-agent")) / CHECKS_DIR
    kinds = {}
    for runtime in shipped_runtimes():
        if runtime.compiled:
            assert runtime.syntax_check is None, runtime.name
            continue
        assert runtime.syntax_check is not None, runtime.name
        kinds[runtime.name] = runtime.syntax_check.kind
        program = runtime.program_for(runtime.conformance.hello, checks_dir=str(checks))
        for arg in (*program.run, *program.run_environment.values()):
            for path in re.findall(rf"{re.escape(str(checks))}[^'\"]*", arg):
                assert Path(path).exists(), (runtime.name, path)
    assert kinds["python"] is kinds["javascript"] is kinds["ruby"] is SyntaxCheckKind.IN_PROCESS
    assert kinds["bash"] is SyntaxCheckKind.COMMAND
    assert kinds["sqlite"] is SyntaxCheckKind.NONE


def test_the_checks_placeholder_is_the_agent_directory_in_the_sandbox() -> None:
    """{checks} becomes the checks/ beside the agent, mounted at AGENT_DIR, before any argument follows."""
    assert f"{AGENT_DIR}/{CHECKS_DIR}" == SANDBOX_CHECKS_DIR
    python = shipped_runtimes().get("python")
    assert python is not None
    program = python.program_for("print(1)")
    assert program.run == ("python3", f"{SANDBOX_CHECKS_DIR}/python.py", "main.py")
    assert (program.check, program.check_in_run) == ((), True)
    r = shipped_runtimes().get("r")
    assert r is not None
    assert r.program_for("1").run_environment == {"R_PROFILE_USER": f"{SANDBOX_CHECKS_DIR}/r.R"}
    bash = shipped_runtimes().get("bash")
    assert bash is not None
    assert bash.program_for("echo").check == ("bash", "-n", "main.sh")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ('kind = "sometimes"', "syntax_check.kind: must be one of: in_process, command, none"),
        ('kind = "command"', "syntax_check.command: required for kind = 'command', and only there"),
        ('kind = "in_process"\ncommand = ["x"]', "syntax_check.command: required for kind = 'command'"),
        ('kind = "none"', "syntax_check.reason: required for kind = 'none'"),
        (
            'kind = "command"\ncommand = ["x"]\nreason = "y"',
            "syntax_check.reason: required for kind = 'none'",
        ),
        (
            'kind = "command"\ncommand = ["x"]\nenvironment = { A = "1" }',
            "syntax_check.environment: only for",
        ),
        ('kind = "in_process"\nenvironment = { "1A" = "x" }', "syntax_check.environment: invalid variable"),
        (
            'kind = "in_process"',
            'syntax_check.kind: "in_process": run (or syntax_check.environment) must load',
        ),
        (
            'kind = "command"\ncommand = ["{entry}"]',
            "syntax_check.command: uses {entry}, which needs an [entry]",
        ),
    ],
)
def test_invalid_syntax_checks_name_the_field(tmp_path: Path, change: str, problem: str) -> None:
    """A [syntax_check] that cannot work is reported with the field at fault."""
    (tmp_path / "x.toml").write_text(VALID.replace(SYNTAX_CHECK, f"[syntax_check]\n{change}\n"))
    with pytest.raises(RuntimeConfigError) as raised:
        load_runtimes(tmp_path)
    assert problem in str(raised.value)


# Compiled, with the snippet a compiled runtime needs, so that the check named is the one failing.
_COMPILED = ('infinite_loop = "while True: pass"', 'infinite_loop = "while True: pass"\ncompile_error = "x"')


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ([(SYNTAX_CHECK, "")], "syntax_check: required without a compile step"),
        ([('run = ["python3", "main.py"]', 'run = ["./a"]\ncompile = ["cc", "x.c"]'), _COMPILED],
         "syntax_check: not for a runtime with a compile step"),
        ([('run = ["python3", "main.py"]', f'run = ["python3", "{CHECKS_PLACEHOLDER}/x.py"]')],
         'run: uses {checks}, which needs a [syntax_check] of kind = "in_process"'),
        ([('run = ["python3", "main.py"]', f'run = ["./a"]\ncompile = ["{CHECKS_PLACEHOLDER}/cc"]'),
          (SYNTAX_CHECK, ""), _COMPILED],
         "compile: uses {checks}, which belongs in run or syntax_check only"),
        ([('syntax_error = "print(\'unclosed\'"\n', "")], "conformance.syntax_error: required field missing"),
    ],
)  # fmt: skip
def test_syntax_checks_fit_the_runtime(tmp_path: Path, changes: list[tuple[str, str]], problem: str) -> None:
    """Every runtime has a syntax_error snippet; only one without a compile step says how it checks them."""
    text = VALID
    for old, new in changes:
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "x.toml").write_text(text)
    with pytest.raises(RuntimeConfigError) as raised:
        load_runtimes(tmp_path)
    assert problem in str(raised.value)


_PACKAGES_SNIPPET = 'infinite_loop = "while True: pass"\npackages = "import json"'


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (
            '[build.pip]\nnumpy = ">=2"',
            "build.pip: versions must be exact releases like \"1.2.3\": numpy = '>=2'",
        ),
        ('[build.pip]\n"numpy; os_name" = "2.5.5"', "build.pip: not PyPI package names: numpy; os_name"),
        ('[build.npm]\nlodash = "^4.17.0"', "build.npm: versions must be exact releases"),
        ('[build.npm]\n"../lodash" = "4.18.1"', "build.npm: not npm package names: ../lodash"),
        ("[build.npm]\nlodash = 4", "build.npm.lodash: expected a string"),
    ],
)
def test_invalid_language_packages_name_the_field(tmp_path: Path, table: str, problem: str) -> None:
    """A [build.pip] or [build.npm] entry that is no exact pin of a package name is refused, by field."""
    text = VALID.replace('packages = ["python3-minimal"]\n', f'packages = ["python3-minimal"]\n{table}\n')
    (tmp_path / "x.toml").write_text(text.replace('infinite_loop = "while True: pass"', _PACKAGES_SNIPPET))
    with pytest.raises(RuntimeConfigError) as raised:
        load_runtimes(tmp_path)
    assert problem in str(raised.value)


def _versioned(name: str, extra: str) -> str:
    """VALID as a runtime named ``name``, with ``extra`` top-level keys (no aliases, its own image)."""
    return VALID.replace('name = "python"', f'name = "{name}"\n{extra}').replace(
        "example/python:1", f"example/{name}:1"
    )


def test_a_second_version_of_a_language_loads(tmp_path: Path) -> None:
    """A runtime with language and version beside the default of that name: both are the language's."""
    (tmp_path / "python.toml").write_text(VALID)
    (tmp_path / "python3.9.toml").write_text(_versioned("python3.9", 'language = "python"\nversion = "3.9"'))
    registry = load_runtimes(tmp_path)
    python, older = registry.get("python"), registry.get("python3.9")
    assert python is not None
    assert older is not None
    assert (python.language, python.version, python.is_default) == ("python", None, True)
    assert (older.language, older.version, older.is_default) == ("python", "3.9", False)
    assert registry.of_language("python") == [python, older]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('version = "3.x"', "version: must be a dotted number such as 3.11"),
        ('version = "3.11\\n"', "version: must be a dotted number such as 3.11"),
        ("version = 3.11", "version: expected a string"),
        ('version = "1' + "0" * 32 + '"', "version: must be a dotted number"),
        ('language = "Python"', "language: must be lower-case letters"),
        ("version_pattern = '(unclosed'", "version_pattern: is not a regular expression"),
        ("version_pattern = 'v[0-9]+'", "version_pattern: must have exactly one group"),
        ("version_pattern = '(a)(b)'", "version_pattern: must have exactly one group"),
    ],
)
def test_invalid_version_keys_name_the_field(tmp_path: Path, extra: str, problem: str) -> None:
    """A bad language, version or version_pattern is reported with its field."""
    (tmp_path / "x.toml").write_text(VALID.replace('name = "python"', f'name = "python"\n{extra}'))
    with pytest.raises(RuntimeConfigError) as raised:
        load_runtimes(tmp_path)
    assert problem in str(raised.value)


def test_language_packages_need_a_conformance_snippet(tmp_path: Path) -> None:
    """A runtime declaring language packages must say how the conformance suite imports them."""
    text = VALID.replace(
        'packages = ["python3-minimal"]\n', 'packages = ["python3-minimal"]\n[build.pip]\nsix = "1.17.0"\n'
    )
    (tmp_path / "x.toml").write_text(text)
    with pytest.raises(RuntimeConfigError) as raised:
        load_runtimes(tmp_path)
    assert "conformance.packages: required with [build.pip] or [build.npm]" in str(raised.value)
    (tmp_path / "x.toml").write_text(text.replace('infinite_loop = "while True: pass"', _PACKAGES_SNIPPET))
    assert load_runtimes(tmp_path).get("python") is not None


def _extending(tmp_path: Path, name: str, extends: str, *, suite: str | None = None) -> None:
    text = VALID.replace('name = "python"', f'name = "{name}"')
    table = f'extends = "{extends}"\n' + (f'suite = "{suite}"\n' if suite else "")
    text = text.replace('packages = ["python3-minimal"]\n', f'packages = ["python3-pip"]\n{table}')
    (tmp_path / f"{name}.toml").write_text(text)


def test_an_extending_runtime_gets_the_whole_image_recipe(tmp_path: Path) -> None:
    """Extending another runtime, a recipe holds that one's packages and files first, then its own."""
    (tmp_path / "python.toml").write_text(
        VALID.replace(
            'packages = ["python3-minimal"]\n', 'packages = ["python3-minimal"]\nfiles = { "/etc/a" = "a" }\n'
        )
    )
    _extending(tmp_path, "python-pip", "python")
    registry = load_runtimes(tmp_path)
    extended = registry.get("python-pip")
    assert extended is not None
    assert extended.build.packages == ("python3-minimal", "python3-pip")
    assert extended.build.files == {"/etc/a": "a"}
    assert extended.build.extends == "python"
    python = registry.get("python")
    assert python is not None
    assert python.build.build_key() != extended.build.build_key()


@pytest.mark.parametrize(
    ("runtimes", "problem"),
    [
        ([("a", "nothing")], "a.toml: build.extends: no runtime is named 'nothing'"),
        ([("a", "b"), ("b", "a")], "b.toml: build.extends: a -> b -> a is a cycle"),
        ([("a", "a")], "a.toml: build.extends: a -> a is a cycle"),
    ],
)
def test_extends_must_name_another_runtime_without_a_cycle(
    tmp_path: Path, runtimes: list[tuple[str, str]], problem: str
) -> None:
    """An extends naming no runtime, or going round in a cycle, is reported by file and field."""
    for name, extends in runtimes:
        _extending(tmp_path, name, extends)
    with pytest.raises(RuntimeConfigError) as raised:
        load_runtimes(tmp_path)
    assert any(p.endswith(problem) for p in raised.value.problems), raised.value.problems


def test_extends_stays_within_one_suite(tmp_path: Path) -> None:
    """An image is built only on one from the same Debian suite."""
    (tmp_path / "python.toml").write_text(VALID)
    _extending(tmp_path, "old", "python", suite="bookworm")
    problem = r"build\.extends: python is built from trixie, not bookworm$"
    with pytest.raises(RuntimeConfigError, match=problem):
        load_runtimes(tmp_path)


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"p39.toml": 'language = "python"'}, "p39.toml: language: no runtime is named 'python'"),
        ({"python.toml": "", "p39.toml": 'language = "py"'},
         "p39.toml: language: 'py' is an alias of python"),
        (
            {"python.toml": 'language = "snake"', "snake.toml": "", "p39.toml": 'language = "python"'},
            "p39.toml: language: runtime 'python' is itself of language 'snake'",
        ),
        (
            {"python.toml": 'version = "3.11"', "p311.toml": 'language = "python"\nversion = "3.011"'},
            "python.toml: version: python 3.11 is declared by",
        ),
        (
            {"python.toml": "", "a.toml": 'language = "python"\nversion = "3.9"',
             "b.toml": 'language = "python"\nversion = "3.9"'},
            "b.toml: version: python 3.9 is declared by",
        ),
    ],
)  # fmt: skip
def test_languages_and_versions_must_fit_together(
    tmp_path: Path, files: dict[str, str], problem: str
) -> None:
    """A language needs its default runtime of that name; one language never declares a version twice."""
    for file, extra in files.items():
        name = file.removesuffix(".toml")
        aliases = 'aliases = ["py"]\n' if name == "python" else ""
        (tmp_path / file).write_text(_versioned(name, aliases + extra))
    with pytest.raises(RuntimeConfigError) as raised:
        load_runtimes(tmp_path)
    assert problem in str(raised.value)


def test_the_shipped_python311_is_a_second_python() -> None:
    """runtimes/python3.11.toml is python's 3.11 on bookworm; python itself stays the language's default."""
    registry = shipped_runtimes()
    python, python311 = registry.get("python"), registry.get("python3.11")
    assert python is not None
    assert python311 is not None
    assert (python311.language, python311.version, python311.aliases) == ("python", "3.11", ())
    assert python311.build.suite == "bookworm"
    assert python311.image == "sandboxd.local/runtimes/python3.11:bookworm"
    assert python.is_default
    assert registry.of_language("python")[0] is python
    assert registry.get("py") is python


def test_the_readme_lists_every_runtime_as_its_file_says() -> None:
    """The README's languages table has a row per runtime, with its language and source as shipped."""
    readme = (SHIPPED_RUNTIMES.parent / "README.md").read_text()
    table = readme.split("<!-- languages table: begin -->")[1].split("<!-- languages table: end -->")[0]
    rows = [line.strip("|").split(" | ") for line in table.strip().splitlines()[2:]]
    listed = {row[0].strip(): row for row in rows}
    runtimes = shipped_runtimes()
    assert set(listed) == {runtime.name for runtime in runtimes}
    for runtime in runtimes:
        row = listed[runtime.name]
        assert row[1] == runtime.language, row
        assert row[5].strip() == image_source(runtime.build), row
