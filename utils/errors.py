"""User-facing errors and the CLI wrapper that turns them into one line.

Library code raises :class:`UserError` for anything a user can cause (bad
config, missing data, wrong checkpoint). Entry points call :func:`cli_main`,
which prints ``error: <message>`` on one line and exits with code 2 instead of
showing a traceback.
"""
import logging
import sys

EXIT_USAGE = 2


class UserError(Exception):
    """A problem the user can fix; its message is shown as one line."""

    def __str__(self):
        return " ".join(super().__str__().split())


def cli_main(fn, argv=None):
    """Run ``fn(argv)`` and map user errors to a one-line message and exit 2."""
    try:
        return fn(argv)
    except UserError as exc:
        logging.getLogger("rst").debug("user error", exc_info=True)
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None
