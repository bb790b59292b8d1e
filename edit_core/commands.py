"""The conventions both command lines share: a user mistake is one ``error:`` line and exit code 2,
Ctrl-C is exit code 130, success is 0. ``report_errors`` applies them to a command."""

from __future__ import annotations

import importlib
import sys
from typing import Callable

EXIT_OK, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 2, 130


class CommandError(Exception):
    """A user mistake found by a command itself (a bad option, an unwritable output, …)."""


def user_error_types() -> tuple[type, ...]:
    """Every error that means "the input is wrong", not "the pack is broken" (imported lazily: cheap start-up)."""
    from .adapter import AdapterError
    from .families import FamilyError
    from .teacher_files import TeacherError

    types = [CommandError, AdapterError, FamilyError, TeacherError]
    for module, name in ((".bench", "BenchError"), (".demo", "DemoError"), (".distill.data", "DistillDataError"),
                         (".distill.trainer", "DistillError")):
        try:
            types.append(getattr(importlib.import_module(module, __package__), name))
        except ImportError:  # an optional part (e.g. without diffusers) has no errors to report
            continue
    return tuple(types)


def report_errors(command: Callable[[], int], interrupted: str = "interrupted") -> int:
    """Run ``command``; print a user mistake as one ``error:`` line (exit 2) and Ctrl-C as ``interrupted`` (130)."""
    try:
        return command()
    except user_error_types() as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED


__all__ = ["EXIT_OK", "EXIT_USER_ERROR", "EXIT_INTERRUPTED", "CommandError", "report_errors", "user_error_types"]
