"""sandboxd's syntax check for Python: python3 python.py main.py [args...].

The program is compiled here, in the process that then runs it: one that does not
parse never starts (the interpreter's own message goes to stderr and b"syntax" to the
status pipe, fd 3); one that does runs as __main__ with its own sys.argv, sys.path[0]
and __file__, fd 3 closed, and an uncaught exception's traceback starts in the program.
Only what the interpreter loads anyway is imported, so that a program starts as fast: no
typing (its TYPE_CHECKING is spelled out), no __future__ (the annotations are quoted).
"""

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import CodeType
    from typing import Any

_STATUS_FD = 3


def _close_status() -> None:
    try:  # noqa: SIM105 (contextlib is one import more at every start)
        os.close(_STATUS_FD)
    except OSError:
        pass  # run by hand, without sandboxd's status pipe


def _compiled() -> "tuple[CodeType, dict[str, Any]]":
    script = os.path.abspath(sys.argv[1])
    with open(script, "rb") as source:
        text = source.read()
    try:
        # dont_inherit: none of this file's compiler flags reach the program.
        code = compile(text, script, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as error:  # ValueError: NUL bytes in the source (3.11)
        import traceback  # noqa: PLC0415 (only a program that does not parse needs it)

        try:  # noqa: SIM105 (as above)
            os.write(_STATUS_FD, b"syntax")
        except OSError:
            pass
        _close_status()
        sys.stderr.write("".join(traceback.format_exception_only(type(error), error)))
        sys.exit(1)
    _close_status()
    main = type(sys)("__main__")
    # The loader python3 gives a script it runs (SourceFileLoader), as this file has one.
    loader = type(globals()["__loader__"])("__main__", script)
    vars(main).update(__file__=script, __cached__=None, __loader__=loader, __builtins__=__builtins__)
    sys.modules["__main__"] = main
    sys.argv[:] = sys.argv[1:]
    sys.path[0] = os.path.dirname(script)
    return code, main.__dict__


_code, _namespace = _compiled()
try:
    exec(_code, _namespace)  # noqa: S102 (running the program is this file's job)
except BaseException as _error:
    # The traceback starts in the program, as when python3 runs it directly.
    if _error.__traceback__ is not None:
        _error.__traceback__ = _error.__traceback__.tb_next
    raise
