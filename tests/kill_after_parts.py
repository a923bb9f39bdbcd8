"""Run the `thinkrl` command and kill -9 itself right after it has written its N-th part file: a SIGKILL mid-run
at a point a test can choose (an outside kill races a stage that writes its parts in milliseconds).

    python tests/kill_after_parts.py 2 segment --rollouts R --out T --shard 0/2     # dies after 2 part files
"""

from __future__ import annotations

import os
import signal
import sys

from thinkrl.artifacts import ArtifactWriter

LIMIT = int(sys.argv[1])
_write_part = ArtifactWriter.write_part
_written = 0


def write_part(self, *args, **kwargs):
    global _written
    _write_part(self, *args, **kwargs)
    _written += 1
    if _written >= LIMIT:
        os.kill(os.getpid(), signal.SIGKILL)


ArtifactWriter.write_part = write_part

if __name__ == "__main__":
    from stages.cli import app

    sys.argv = ["thinkrl", *sys.argv[2:]]
    app()
