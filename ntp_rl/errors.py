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


class DiskFull(RuntimeError):
    """The disk filled up while a stage wrote (a checkpoint, the adapter, the manifest).

    A failure while running, not bad input: the CLI prints the message on one line, without a
    traceback, and exits with status 1. The message names the disk, the stage and the newest
    complete checkpoint, from which the same command resumes once there is room.
    """


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from or while handling, is "no space left on device".

    Python raises OSError(ENOSPC) (EDQUOT for a full quota); torch and safetensors wrap the same
    failure in their own exception types, with the system's message in the text.
    """
    import errno

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(current)
        if "No space left on device" in text or "Disk quota exceeded" in text or "StorageFull" in text:
            return True
        current = current.__cause__ or current.__context__
    return False
