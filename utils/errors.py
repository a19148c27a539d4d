"""User-facing errors and the CLI wrapper that turns them into one line.

Library code raises :class:`UserError` for anything a user can cause (bad
config, missing data, wrong checkpoint). Entry points call :func:`cli_main`,
which prints ``error: <message>`` on one line and exits with code 2 instead of
showing a traceback. A run stopped by Ctrl-C after saving a checkpoint raises
:class:`Interrupted`: its message and exit code 130, as for any Ctrl-C.
"""
import logging
import sys

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's code for Ctrl-C


class UserError(Exception):
    """A problem the user can fix; its message is shown as one line."""

    def __str__(self):
        return " ".join(super().__str__().split())


class Interrupted(Exception):
    """Ctrl-C, handled: the message says what was saved and how to continue."""


def cli_main(fn, argv=None):
    """Run ``fn(argv)`` and map user errors to a one-line message and exit 2."""
    try:
        return fn(argv)
    except UserError as exc:
        logging.getLogger("rst").debug("user error", exc_info=True)
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(EXIT_USAGE) from None
    except Interrupted as exc:
        sys.stderr.write(f"interrupted: {exc}\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
