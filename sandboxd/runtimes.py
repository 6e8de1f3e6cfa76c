"""Language runtimes, declared one per TOML file and loaded once at start-up."""

from __future__ import annotations

import enum
import hashlib
import json
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from sandboxd.validation import ValidationError, check, positive, structure

_NAME = re.compile(r"^[a-z][a-z0-9+#.-]{0,31}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IMAGE_PATH = re.compile(r"^(/[A-Za-z0-9_.+-]+)+$")
# A distribution name as PyPI normalises it (PEP 503), and an exact release (PEP 440, no ranges).
_PIP_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_PIP_VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?$")
# An npm package name (scoped or not) and an exact semantic version.
_NPM_NAME = re.compile(r"^(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*$")
_NPM_VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$")
# A version a runtime provides: a dotted number (3.11, 1.24.4), ASCII digits only.
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_VERSION: Final = 32
# What a version_pattern is by default: the first dotted number in the version line.
DEFAULT_VERSION_PATTERN: Final = r"([0-9]+(?:\.[0-9]+)*)"
# Bumped when the way images are built changes, so that existing images count as stale.
IMAGE_RECIPE_VERSION = 3
# Where [build.npm] packages go in an image (npm's own global layout); NODE_PATH names it.
NPM_PACKAGES_DIR: Final = "/usr/local/lib/node_modules"


def _pinned(
    field: str, packages: Mapping[str, str], name: re.Pattern[str], version: re.Pattern[str], registry: str
) -> None:
    bad_names = [n for n in packages if len(n) > 214 or not name.match(n)]
    check(not bad_names, field, f"not {registry} package names: {', '.join(bad_names)}")
    unpinned = [f"{n} = {v!r}" for n, v in packages.items() if not version.match(v)]
    check(not unpinned, field, f'versions must be exact releases like "1.2.3": {", ".join(unpinned)}')


@attrs.frozen
class Limits:
    """Per-execution limits: defaults, and the most a request may ask for."""

    timeout: float = attrs.field(validator=positive)
    max_timeout: float = attrs.field(validator=positive)
    memory_mib: int = attrs.field(validator=positive)
    pids: int = attrs.field(validator=positive)
    cpus: float = attrs.field(default=1.0, validator=positive)
    max_memory_mib: int | None = None
    max_pids: int | None = None

    def __attrs_post_init__(self) -> None:
        check(
            self.timeout <= self.max_timeout, "timeout", f"must not exceed max_timeout ({self.max_timeout})"
        )
        if self.max_memory_mib is not None:
            check(self.memory_mib <= self.max_memory_mib, "memory_mib", "must not exceed max_memory_mib")
        if self.max_pids is not None:
            check(self.pids <= self.max_pids, "pids", "must not exceed max_pids")


@attrs.frozen
class ImageRecipe:
    """How ``sandboxd images build`` makes the runtime's image from Debian packages."""

    packages: tuple[str, ...]
    suite: str = "trixie"
    files: Mapping[str, str] = attrs.field(factory=dict)
    # Language packages and their pinned versions, installed at build time from PyPI (wheels
    # only, for the image's own Python) and from the npm registry (install scripts never run).
    pip: Mapping[str, str] = attrs.field(factory=dict)
    npm: Mapping[str, str] = attrs.field(factory=dict)
    # Another runtime whose image this one is built on: its layers come first, and this image's
    # own layer holds only what its packages add to them (so a JDK or a GCC is stored once).
    # Loaded, the recipe is the whole image's: the other runtime's packages, files and
    # language packages with this one's.
    extends: str | None = None
    # Commands run in the image once its packages are in (argv lists, chrooted, with the
    # runtime's environment): work every program would otherwise redo, such as compiling Go's
    # standard library into a cache it reads.
    commands: tuple[tuple[str, ...], ...] = ()
    # Said beside the version in the README's languages table: why it is the one it is.
    note: str | None = None

    def __attrs_post_init__(self) -> None:
        check(bool(self.packages), "packages", "must list at least one Debian package")
        bad_paths = [p for p in self.files if not _IMAGE_PATH.match(p) or "/../" in p or p.endswith("/..")]
        check(not bad_paths, "files", f"not absolute file paths: {', '.join(bad_paths)}")
        bad = [p for p in self.packages if not _PACKAGE.match(p)]
        check(not bad, "packages", f"not Debian package names: {', '.join(bad)}")
        check(bool(re.match(r"^[a-z]+$", self.suite)), "suite", "must be a Debian suite name like trixie")
        _pinned("pip", self.pip, _PIP_NAME, _PIP_VERSION, "PyPI")
        _pinned("npm", self.npm, _NPM_NAME, _NPM_VERSION, "npm")
        check(self.extends is None or bool(_NAME.match(self.extends)), "extends", "must name a runtime")
        check(
            all(c and all(c) for c in self.commands),
            "commands",
            "must be non-empty argv lists of non-empty strings",
        )

    def on(self, below: ImageRecipe) -> ImageRecipe:
        """The recipe of the whole image built on ``below``'s: everything that one has, and this one's own."""
        packages = tuple(dict.fromkeys([*below.packages, *self.packages]))
        return attrs.evolve(
            self,
            packages=packages,
            files={**below.files, **self.files},
            pip={**below.pip, **self.pip},
            npm={**below.npm, **self.npm},
            commands=(*below.commands, *self.commands),
        )

    def build_key(self) -> str:
        """A digest of everything that determines the image's content."""
        recipe = {
            "packages": sorted(self.packages),
            "suite": self.suite,
            "files": dict(sorted(self.files.items())),
            "pip": dict(sorted(self.pip.items())),
            "npm": dict(sorted(self.npm.items())),
            "recipe": IMAGE_RECIPE_VERSION,
        }
        if self.extends is not None:
            recipe["extends"] = self.extends
        if self.commands:
            recipe["commands"] = [list(command) for command in self.commands]
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


@attrs.frozen
class Conformance:
    """Snippets the conformance suite runs in this language; tests/test_conformance.py says what each does."""

    hello: str
    echo_stdin: str
    read_env: str
    exit_3: str
    utf8: str
    runtime_error: str
    infinite_loop: str
    # Source that does not parse: a compile error, where the language has a parse step.
    syntax_error: str
    compile_error: str | None = None
    # Programs that print "hello" under an entry name other than the default (see EntryPoint).
    named_entry: tuple[str, ...] = ()
    # With [build.pip] or [build.npm]: reads {"name": "version", ...} as JSON on stdin, imports
    # each package and prints one "name version" line for each, the version it found installed.
    packages: str | None = None


def _argv(_instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    check(all(arg for arg in value), attribute.name, "arguments must not be empty strings")


ENTRY_PLACEHOLDER: Final = "{entry}"
# In ``run`` and a [syntax_check]: the directory of sandboxd's syntax checks in the sandbox,
# which is the agent's directory (sandboxd.engine.oci.AGENT_DIR, mounted read-only) + checks/.
CHECKS_PLACEHOLDER: Final = "{checks}"
SANDBOX_CHECKS_DIR: Final = "/dev/.sandboxd/checks"
# Where an image keeps a check of its own, one made when it is built (Node's startup snapshot).
IMAGE_CHECKS_DIR: Final = "/usr/local/lib/sandboxd/"
# What a name found in the code may be before it names a file or goes into a command: an
# identifier (dots for module paths), never a path, an option or shell syntax.
_ENTRY_NAME = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]{0,63}(\.[A-Za-z_$][A-Za-z0-9_$]{0,63}){0,7}$")


def _patterns(_instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    check(bool(value), attribute.name, "must list at least one regular expression")
    for pattern in value:
        try:
            compiled = re.compile(pattern, re.MULTILINE)
        except re.error as error:
            check(False, attribute.name, f"{pattern!r} is not a regular expression: {error}")
            continue
        check(compiled.groups == 1, attribute.name, f"{pattern!r} must have exactly one group (the name)")


@attrs.frozen
class EntryPoint:
    """Where a language ties a file or module name to the code: how to read that name from it.

    The first of ``patterns`` that matches gives the name; without a match (or with a name
    that is no plain identifier) it is ``default``. The name replaces ``{entry}`` in
    ``source_file``, ``compile`` and ``run``.
    """

    patterns: tuple[str, ...] = attrs.field(validator=_patterns)
    default: str

    def __attrs_post_init__(self) -> None:
        check(bool(_ENTRY_NAME.match(self.default)), "default", "must be an identifier")

    def name_in(self, code: str) -> str:
        """The entry name ``code`` declares, or the default."""
        for pattern in self.patterns:
            found = re.search(pattern, code, re.MULTILINE)
            if found is not None:
                return found.group(1) if _ENTRY_NAME.match(found.group(1)) else self.default
        return self.default


class SyntaxCheckKind(enum.Enum):
    """Where a runtime without a compile step finds out that a program does not parse."""

    # The run command parses the program before any of it runs (a check from {checks} that it
    # loads) and writes b"syntax" to fd 3, a pipe sandboxd gives that process alone.
    IN_PROCESS = "in_process"
    # A parse-only command runs first (bash -n); a non-zero exit is a compile error.
    COMMAND = "command"
    # The language parses as it runs (``reason`` says how): a program's error is its own.
    NONE = "none"


@attrs.frozen
class SyntaxCheck:
    """How a runtime without a compile step tells a program that does not parse from one that fails."""

    kind: SyntaxCheckKind
    command: tuple[str, ...] = attrs.field(default=(), validator=_argv)
    # Variables the run process gets besides the runtime's, to load its check (R's profile).
    environment: Mapping[str, str] = attrs.field(factory=dict)
    reason: str | None = None

    def __attrs_post_init__(self) -> None:
        kind = self.kind
        only_for = "required for kind = {!r}, and only there"
        check(bool(self.command) == (kind is SyntaxCheckKind.COMMAND), "command", only_for.format("command"))
        check(not self.environment or kind is SyntaxCheckKind.IN_PROCESS, "environment",
              'only for kind = "in_process"')  # fmt: skip
        check(bool(self.reason) == (kind is SyntaxCheckKind.NONE), "reason",
              only_for.format("none") + " (why the language has no parse step of its own)")  # fmt: skip
        bad_env = [k for k in self.environment if not _ENV_NAME.match(k)]
        check(not bad_env, "environment", f"invalid variable names: {', '.join(bad_env)}")


@attrs.frozen
class Program:
    """How one snippet is written and started: its file name and its commands, names filled in.

    ``check`` is a parse-only command that runs before ``run``; with ``check_in_run`` the run
    command checks itself and reports on fd 3, given ``run_environment`` besides the runtime's.
    """

    source_file: str
    compile: tuple[str, ...]
    run: tuple[str, ...]
    check: tuple[str, ...] = ()
    check_in_run: bool = False
    run_environment: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Runtime:
    """One language: its image, how its source is compiled and run, and its limits."""

    name: str
    image: str
    source_file: str
    run: tuple[str, ...] = attrs.field(validator=_argv)
    version_command: tuple[str, ...] = attrs.field(validator=_argv)
    limits: Limits
    build: ImageRecipe
    conformance: Conformance
    aliases: tuple[str, ...] = ()
    compile: tuple[str, ...] = attrs.field(default=(), validator=_argv)
    environment: Mapping[str, str] = attrs.field(factory=dict)
    entry: EntryPoint | None = None
    syntax_check: SyntaxCheck | None = None
    # Whether a request's args may follow the run command (not where they would be read as code).
    arguments: bool = True
    # The language a request names to get this runtime (its default runtime is named so).
    language: str = attrs.field()
    # The version line it is built to provide ("3.11"), until its image says which it has.
    version: str | None = None
    # Extracts the version number from the first line version_command prints (one group).
    version_pattern: str = DEFAULT_VERSION_PATTERN

    @language.default
    def _language_is_the_name(self) -> str:
        return self.name

    def __attrs_post_init__(self) -> None:
        names = "must be lower-case letters, digits or +#.- (at most 32)"
        check(bool(_NAME.match(self.name)), "name", names)
        check(bool(_NAME.match(self.language)), "language", names)
        check(
            self.version is None or is_version(self.version),
            "version",
            f"must be a dotted number such as 3.11 (at most {MAX_VERSION} characters)",
        )
        self._check_version_pattern()
        bad_aliases = [a for a in self.aliases if not _NAME.match(a)]
        check(not bad_aliases, "aliases", f"invalid: {', '.join(bad_aliases)}")
        placeholders = [name for name, value in self._templates() if ENTRY_PLACEHOLDER in value]
        check(
            self.entry is not None or not placeholders,
            placeholders[0] if placeholders else "entry",
            f"uses {ENTRY_PLACEHOLDER}, which needs an [entry] table",
        )
        source_file = self.program_for("").source_file
        check(bool(_FILE_NAME.match(source_file)), "source_file", "must be a plain file name")
        check(bool(self.run), "run", "must name the program to run")
        check(bool(self.version_command), "version_command", "must name a command")
        check(bool(self.image) and " " not in self.image, "image", "must be an image reference")
        bad_env = [k for k in self.environment if not _ENV_NAME.match(k)]
        check(not bad_env, "environment", f"invalid variable names: {', '.join(bad_env)}")
        if self.compiled:
            message = "required for a runtime with a compile step"
            check(self.conformance.compile_error is not None, "conformance.compile_error", message)
        self._check_syntax_check()
        if self.build.pip or self.build.npm:
            message = "required with [build.pip] or [build.npm]: a program that imports each package"
            check(self.conformance.packages is not None, "conformance.packages", message)

    def _check_version_pattern(self) -> None:
        try:
            compiled = re.compile(self.version_pattern)
        except re.error as error:
            check(False, "version_pattern", f"is not a regular expression: {error}")
            return
        message = "must have exactly one group (the version number)"
        check(compiled.groups == 1, "version_pattern", message)

    def parse_version(self, line: str | None) -> str | None:
        """The version number in ``line`` (what version_command printed first), or None if it has none."""
        if line is None:
            return None
        found = re.search(self.version_pattern, line.split("\n", 1)[0])
        number = found.group(1) if found is not None else None
        return number if number is not None and is_version(number) else None

    @property
    def is_default(self) -> bool:
        """True for the runtime its language's name names: the one a request without a version gets."""
        return self.name == self.language

    def _check_syntax_check(self) -> None:
        declared = self.syntax_check
        if self.compiled:
            check(declared is None, "syntax_check", "not for a runtime with a compile step (it reports them)")
        else:
            message = 'required without a compile step (kind = "none" when the language has no parse step)'
            check(declared is not None, "syntax_check", message)
        for name, value in self._templates():
            check(CHECKS_PLACEHOLDER not in value or name in ("run", "syntax_check.command"), name,
                  f"uses {CHECKS_PLACEHOLDER}, which belongs in run or syntax_check only")  # fmt: skip
        in_process = declared is not None and declared.kind is SyntaxCheckKind.IN_PROCESS
        loading = [*self.run, *(declared.environment.values() if declared else ())]
        image_checks = any(path.startswith(IMAGE_CHECKS_DIR) for path in self.build.files)
        loads = any(
            CHECKS_PLACEHOLDER in value or (image_checks and IMAGE_CHECKS_DIR in value) for value in loading
        )
        check(in_process or not any(CHECKS_PLACEHOLDER in a for a in self.run), "run",
              f'uses {CHECKS_PLACEHOLDER}, which needs a [syntax_check] of kind = "in_process"')  # fmt: skip
        message = (
            f'"in_process": run (or syntax_check.environment) must load a check from {CHECKS_PLACEHOLDER},'
            f" or from {IMAGE_CHECKS_DIR} where [build.files] puts one"
        )
        check(not in_process or loads, "syntax_check.kind", message)

    @property
    def compiled(self) -> bool:
        """True when the source is compiled before it runs."""
        return bool(self.compile)

    def _templates(self) -> list[tuple[str, str]]:
        command = self.syntax_check.command if self.syntax_check else ()
        return [("source_file", self.source_file), *(("compile", a) for a in self.compile),
                *(("run", a) for a in self.run), *(("syntax_check.command", a) for a in command)]  # fmt: skip

    def program_for(self, code: str, checks_dir: str = SANDBOX_CHECKS_DIR) -> Program:
        """The file name and commands for ``code``, with its entry name and ``checks_dir`` filled in."""
        name = self.entry.name_in(code) if self.entry is not None else None

        def fill(value: str) -> str:
            if name is not None:
                value = value.replace(ENTRY_PLACEHOLDER, name)
            return value.replace(CHECKS_PLACEHOLDER, checks_dir)

        syntax_check = self.syntax_check
        return Program(
            source_file=fill(self.source_file),
            compile=tuple(map(fill, self.compile)),
            run=tuple(map(fill, self.run)),
            check=tuple(map(fill, syntax_check.command)) if syntax_check else (),
            check_in_run=syntax_check is not None and syntax_check.kind is SyntaxCheckKind.IN_PROCESS,
            run_environment={k: fill(v) for k, v in syntax_check.environment.items()} if syntax_check else {},
        )


def is_version(text: str) -> bool:
    """Whether ``text`` is a dotted number (3, 3.11, 1.24.4) of at most MAX_VERSION characters."""
    return len(text) <= MAX_VERSION and _VERSION.fullmatch(text) is not None


def version_matches(requested: str, known: str) -> bool:
    """Whether ``requested`` is a prefix of ``known``, component by component ("3.1" is 3.1.x, not 3.13)."""
    wanted, have = requested.split("."), known.split(".")
    return len(wanted) <= len(have) and all(int(a) == int(b) for a, b in zip(wanted, have, strict=False))


class RuntimeConfigError(Exception):
    """One or more runtime files are invalid; ``problems`` lists each as 'file: field: message'."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid runtime configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


@attrs.frozen
class RuntimeRegistry:
    """All loaded runtimes, looked up by canonical name or alias."""

    runtimes: tuple[Runtime, ...]
    _by_name: Mapping[str, Runtime] = attrs.field(init=False)

    @_by_name.default
    def _index(self) -> Mapping[str, Runtime]:
        return {key: rt for rt in self.runtimes for key in (rt.name, *rt.aliases)}

    def get(self, language: str) -> Runtime | None:
        """Return the runtime for a name or alias, or None."""
        return self._by_name.get(language.lower())

    def of_language(self, language: str) -> list[Runtime]:
        """The runtimes of ``language``: its default first, then the others by name."""
        found = [runtime for runtime in self.runtimes if runtime.language == language]
        return sorted(found, key=lambda runtime: (not runtime.is_default, runtime.name))

    def matching(
        self, language: str, requested: str, known: Callable[[Runtime], str | None]
    ) -> Runtime | None:
        """The first runtime of ``language`` (in ``of_language``'s order) whose ``known`` version matches."""
        for runtime in self.of_language(language):
            version = known(runtime)
            if version is not None and version_matches(requested, version):
                return runtime
        return None

    def __iter__(self) -> Iterator[Runtime]:
        return iter(self.runtimes)

    def __len__(self) -> int:
        return len(self.runtimes)


def parse_runtime(data: Any) -> Runtime:
    """Validate one runtime's parsed TOML; raise ``ValidationError`` listing every problem."""
    return structure(data, Runtime)


def load_runtimes(directory: Path) -> RuntimeRegistry:
    """Load every ``*.toml`` in ``directory``; report every problem in every file at once."""
    problems: list[str] = []
    runtimes: list[Runtime] = []
    files = sorted(directory.glob("*.toml")) if directory.is_dir() else []
    if not files:
        raise RuntimeConfigError([f"{directory}: no runtime files (*.toml) found"])
    claimed: dict[str, Path] = {}
    loaded: dict[Path, Runtime] = {}
    for path in files:
        try:
            runtime = parse_runtime(tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as error:
            problems.append(f"{path}: not valid TOML: {error}")
            continue
        except ValidationError as error:
            problems.extend(f"{path}: {problem}" for problem in error.problems)
            continue
        for key in (runtime.name, *runtime.aliases):
            if key in claimed:
                problems.append(f"{path}: name or alias {key!r} is already used by {claimed[key]}")
            claimed[key] = path
        runtimes.append(runtime)
        loaded[path] = runtime
    problems.extend(_language_problems(loaded))
    resolved = _resolve_extends(runtimes, claimed, problems)
    if problems:
        raise RuntimeConfigError(problems)
    return RuntimeRegistry(tuple(resolved))


def _resolve_extends(
    runtimes: list[Runtime], files: Mapping[str, Path], problems: list[str]
) -> list[Runtime]:
    """Each runtime with its whole image's recipe (see ImageRecipe.extends), in the same order."""
    by_name = {runtime.name: runtime for runtime in runtimes}
    resolved: dict[str, Runtime] = {}

    def problem(runtime: Runtime, chain: tuple[str, ...]) -> str | None:
        below = by_name.get(runtime.build.extends or "")
        if below is None:
            return f"no runtime is named {runtime.build.extends!r}"
        if below.name in chain:
            return f"{' -> '.join([*chain, below.name])} is a cycle"
        if below.build.suite != runtime.build.suite:
            return f"{below.name} is built from {below.build.suite}, not {runtime.build.suite}"
        return None

    def resolve(runtime: Runtime, chain: tuple[str, ...]) -> Runtime | None:
        if runtime.name not in resolved and runtime.build.extends is None:
            resolved[runtime.name] = runtime
        if runtime.name in resolved:
            return resolved[runtime.name]
        found = problem(runtime, chain)
        if found is not None:
            problems.append(f"{files[runtime.name]}: build.extends: {found}")
            return None
        below = resolve(by_name[runtime.build.extends or ""], (*chain, runtime.build.extends or ""))
        if below is not None:
            resolved[runtime.name] = attrs.evolve(runtime, build=runtime.build.on(below.build))
        return resolved.get(runtime.name)

    for runtime in runtimes:
        resolve(runtime, (runtime.name,))
    return [resolved[r.name] for r in runtimes if r.name in resolved]


def _language_problems(loaded: Mapping[Path, Runtime]) -> list[str]:
    """What is wrong across files with the runtimes' languages and versions, as 'file: field: message'."""
    problems = []
    by_name = {runtime.name: runtime for runtime in loaded.values()}
    aliased = {alias: runtime.name for runtime in loaded.values() for alias in runtime.aliases}
    declared: dict[tuple[str, tuple[int, ...]], Path] = {}
    for path, runtime in loaded.items():
        problem = _language_problem(runtime.language, by_name, aliased) if not runtime.is_default else None
        if problem is not None:
            problems.append(f"{path}: language: {problem}")
        if runtime.version is None:
            continue
        version = tuple(int(part) for part in runtime.version.split("."))
        other = declared.setdefault((runtime.language, version), path)
        if other != path:
            problems.append(
                f"{path}: version: {runtime.language} {runtime.version} is declared by {other} already"
            )
    return problems


def _language_problem(
    language: str, by_name: Mapping[str, Runtime], aliased: Mapping[str, str]
) -> str | None:
    """Why ``language``, named by a runtime of another name, is no language's default runtime, or None."""
    if language in aliased:
        return f"{language!r} is an alias of {aliased[language]}, not a default runtime's name"
    default = by_name.get(language)
    if default is None:
        return f"no runtime is named {language!r} (the language's default runtime)"
    if not default.is_default:
        return f"runtime {language!r} is itself of language {default.language!r}, so no language's default"
    return None
