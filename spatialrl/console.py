"""A console a person can read: the job's own lines on the terminal, Ray / Ray Data / DeepSpeed chatter in a log.

`quiet_console(log_path)` sends everything the process writes to file descriptors 1 and 2 (the driver's prints,
the worker lines Ray forwards, C++ and library logs) to `log_path` in full, and passes on to the terminal only the
lines `keep` accepts: stage headers, results, warnings and errors, one line per training step. `verbose=True`
passes everything. Used by `jobs.demo`; a job run alone prints as before.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
WORKER = re.compile(r"^\((?P<who>[^)]*?)(?: pid=\d+)?(?:, ip=[^)]*)?\)\s?")  # "(RayTrainWorker pid=434) ..."
CHATTER = (
    re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d"),  # Ray's Python logging
    re.compile(r"^\[\d{4}-\d\d-\d\d"),  # DeepSpeed's logging
    re.compile(r"^[WIEF]\d{4} \d\d:\d\d"),  # glog (torch, gRPC)
    re.compile(r"^- \S.*(Tasks|Actors|Queued|%\|)"),  # Ray Data operator progress
    re.compile(r"^(Running Dataset|✔️|\[dataset\]|Loading |Fetching )"),
    re.compile(r"%\|"),  # tqdm bars of libraries (model loading, Ray Data)
    re.compile(r"(Warning|warnings\.warn|site-packages/|^\s+return func|DeprecationWarning)"),
)


def keep(line: str) -> str | None:
    """The line as the terminal should show it, or None to keep it in the log only."""
    line = ANSI.sub("", line).rstrip()
    if not line.strip():
        return None
    m = WORKER.match(line)
    if m:  # a line Ray forwarded from a worker: only training progress and errors reach the terminal
        text = line[m.end():]
        step = re.match(r"^\[epoch \d+ step (\d+)\]", text)
        if step:  # reward training: every 50th step (each epoch's validation line is kept whole)
            return text if int(step.group(1)) % 50 == 0 else None
        if text.startswith("[epoch"):
            return text
        if re.match(r"^(ERROR|Error|\w+Error:)", text):  # one line per worker error, named; its stack: the log
            return f"({m.group('who')}) {text}  [a Ray worker's error line; its traceback is in the log]"
        return None
    if any(p.search(line) for p in CHATTER):
        return None
    return line


@contextlib.contextmanager
def quiet_console(log_path: str | Path, verbose: bool = False):
    """Route fds 1 and 2 through a filter for the duration: all to `log_path`, the kept lines to the terminal."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    log = open(log_path, "ab")
    last = [None]

    def pump() -> None:
        buf = b""
        with os.fdopen(read_fd, "rb", buffering=0) as src:
            while True:
                chunk = src.read(65536)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                buf += chunk
                *lines, buf = re.split(rb"[\r\n]", buf)
                for raw in lines:
                    shown = raw.decode("utf-8", "replace") if verbose else keep(raw.decode("utf-8", "replace"))
                    if shown is not None and (verbose or shown != last[0]):  # Ray repeats some worker lines
                        terminal.write(shown + "\n")
                        last[0] = shown
            if buf and not verbose and keep(buf.decode("utf-8", "replace")):
                terminal.write(keep(buf.decode("utf-8", "replace")) + "\n")

    thread = threading.Thread(target=pump, name="quiet-console", daemon=True)
    thread.start()
    # Python-level writers go through the descriptors too (sys.stdout may be a wrapper that bypasses fd 1)
    old_streams = sys.stdout, sys.stderr
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    try:
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = old_streams
        os.dup2(saved_out, 1)  # closes the pipe's write ends: the pump drains and stops
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        thread.join(timeout=10)
        log.close()
        terminal.flush()
        terminal.close()
