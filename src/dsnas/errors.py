"""The one error type users see: a clear one-line message and exit code 2."""


class DsnasError(Exception):
    """Bad input (file, config, data, arguments). The CLI prints it on one line and exits 2."""

    exit_code = 2
