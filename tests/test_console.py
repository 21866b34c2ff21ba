"""The demo's quiet console: what reaches the terminal and what only the log keeps."""

from __future__ import annotations

import os

from spatialrl.console import keep, quiet_console


def test_keep_by_hand():
    assert keep("== 1/4 building 2000 easy-world pairs") == "== 1/4 building 2000 easy-world pairs"
    assert keep("step 3/30 | reward 0.1 | verifier 0.5") == "step 3/30 | reward 0.1 | verifier 0.5"
    assert keep("\x1b[36m(RayTrainWorker pid=434)\x1b[0m [epoch 0] val accuracy 0.51 on 100 pairs") == \
        "[epoch 0] val accuracy 0.51 on 100 pairs"
    assert keep("(RayTrainWorker pid=434) [epoch 0 step 50] loss 0.69") == "[epoch 0 step 50] loss 0.69"
    assert keep("(RayTrainWorker pid=434) [epoch 0 step 51] loss 0.69") is None  # every 50th step only
    # a worker's error: its one error line, with the worker's name; the stack stays in the log
    assert keep("(FluxSampler pid=9) Traceback (most recent call last):") is None
    assert keep("(FluxSampler pid=9)   File \"x.py\", line 3, in f") is None
    assert keep("(FluxSampler pid=9) ValueError: bad prompt") == \
        "(FluxSampler) ValueError: bad prompt  [a Ray worker's error line; its traceback is in the log]"
    assert keep("Traceback (most recent call last):") == "Traceback (most recent call last):"  # the job's own
    for chatter in ("(pid=683) - MapBatches(PairPreprocessor): Tasks: 0; Actors: 1; Queued blocks: 0",
                    "2026-12-02 09:12:27,168\tINFO logging_progress.py:233 -- Tasks: 1",
                    "[2026-12-02 09:08:51,636] [INFO] [real_accelerator.py:203:get_accelerator] cpu",
                    "W1202 08:04:45.502000 16624 torch/utils/cpp_extension.py:183] No CUDA runtime",
                    "Loading pipeline components...: 100%|##########| 7/7", "(raylet) WARNING: 8 PYTHON workers",
                    "/x/site-packages/torch/a.py:83: FutureWarning: all_gather", "   ", ""):
        assert keep(chatter) is None, chatter


def test_quiet_console_logs_everything_and_shows_the_kept_lines(tmp_path, capfd):
    log = tmp_path / "demo.log"
    with quiet_console(log) as terminal:
        print("== stage one", flush=True)
        os.write(1, b"2026-12-02 09:12:27,168\tINFO worker.py:1 -- Started a local Ray instance.\n")
        os.write(2, b"Loading weights: 50%|#####     | 1/2\rLoading weights: 100%|##########| 2/2\n")
        print("RESULT 0.5", flush=True)
        terminal.write("written straight to the terminal\n")
    shown = capfd.readouterr().out
    assert "== stage one" in shown and "RESULT 0.5" in shown and "straight to the terminal" in shown
    assert "Started a local Ray" not in shown and "Loading weights" not in shown
    text = log.read_text()
    assert "Started a local Ray" in text and "Loading weights: 100%" in text and "== stage one" in text
    print("after")  # the descriptors are restored
    assert "after" in capfd.readouterr().out
    with quiet_console(log, verbose=True):
        os.write(1, b"2026-12-02 chatter shown when verbose\n")
    assert "chatter shown when verbose" in capfd.readouterr().out
