"""The LLM replica's Serve log handler survives vLLM's logging setup
(serve_app/pool_server.py): vLLM's dictConfig closes every handler of the
process, and a closed MemoryHandler loses its target, which emptied the
replica's log file and broke Serve's recovery of the replica after a head
restart. Run in a child process: vLLM's setup changes the process's logging."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, logging, logging.handlers, sys
from serve_app.logs import serve_log_handlers_kept

# The handler pair Serve installs on a replica's "ray.serve" logger
# (ray/serve/_private/logging_utils.py configure_component_logger, Ray 2.60).
path = sys.argv[1]
memory = logging.handlers.MemoryHandler(capacity=1, target=logging.handlers.RotatingFileHandler(path))
logger = logging.getLogger("ray.serve")
logger.handlers = [memory]
logger.setLevel(logging.INFO)
logger.propagate = False


def vllm_setup():
    # What the engine's start runs in the replica (AsyncLLM.__init__).
    from vllm.config.logging import LoggingConfig
    from vllm.logger import configure_logging
    configure_logging(LoggingConfig(configure_logging=True))


logger.info("before")
if sys.argv[2] == "kept":
    with serve_log_handlers_kept():
        vllm_setup()
        logger.info("while the engine starts")
else:
    vllm_setup()
    logger.info("while the engine starts")
logger.info("after")
print(json.dumps({"target": getattr(memory.target, "baseFilename", None)}))
"""


def _run(tmp_path: Path, mode: str) -> tuple[dict, list[str]]:
    log = tmp_path / f"replica_{mode}.log"
    out = subprocess.run([sys.executable, "-c", CHILD, str(log), mode], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), log.read_text().splitlines()


def test_vllms_logging_setup_closes_serves_handler(tmp_path: Path) -> None:
    """The bug itself, so the test below is known to guard something."""
    result, lines = _run(tmp_path, "bare")
    assert result["target"] is None
    assert lines == ["before"]


def test_the_handler_is_kept_and_nothing_logged_meanwhile_is_lost(tmp_path: Path) -> None:
    result, lines = _run(tmp_path, "kept")
    # Serve's replica recovery reads this (get_component_logger_file_path).
    assert result["target"] == str(tmp_path / "replica_kept.log")
    assert lines == ["before", "while the engine starts", "after"]
