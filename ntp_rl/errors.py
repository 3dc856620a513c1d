"""Errors the CLI turns into exit statuses: `UserError` is bad input (exit 2), anything else is 1."""


class UserError(Exception):
    """Bad input: a config key, a path, a data column, a reward spec.

    The message must name the culprit (file, key path or column) and say what to do; the CLI prints
    it as one paragraph without a traceback and exits with status 2.
    """


class TrainingDiverged(RuntimeError):
    """Training produced a NaN or infinite loss, gradient norm or weight and was stopped unsaved.

    Not bad input but a failure while running: the CLI prints the message on one line, without a
    traceback, and exits with status 1. The message names the stage, the step, the value and the
    last good checkpoint.
    """
