"""A disk that fills up mid-checkpoint, for tests/test_disk_full.py (loaded by a sitecustomize there).

`install()` wraps `torch.save`: once the trainer has begun its `NTP_RL_FULL_DISK_AT`-th checkpoint
(default 2), writing that checkpoint's optimizer state puts half its bytes on disk and then fails
with OSError(ENOSPC), as a write to a full disk does. The adapter weights of that checkpoint are
already written; its trainer_state.json (written last) never is. Every checkpoint before it is
left alone.
"""

from __future__ import annotations

import errno
import io
import os
import re

CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def install() -> None:
    import torch

    real_save = torch.save
    fail_at = int(os.environ.get("NTP_RL_FULL_DISK_AT", "2"))
    seen: list[str] = []

    def save(obj, f, *args, **kwargs):
        match = CHECKPOINT.search(str(f)) if isinstance(f, (str, os.PathLike)) else None
        if match is not None and match.group(0) not in seen:
            seen.append(match.group(0))
        if match is not None and len(seen) == fail_at and str(f).endswith("optimizer.pt"):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            with open(f, "wb") as handle:
                handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
