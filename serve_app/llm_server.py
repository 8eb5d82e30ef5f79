"""The LLM pools' deployment class: Ray Serve LLM's ``LLMServer``, with the
replica's Serve log handlers kept alive across the vLLM engine's start.

vLLM applies its logging configuration with ``logging.config.dictConfig``
when its engine starts (``AsyncLLM.__init__`` -> ``configure_logging_if_needed``
in vllm/v1/engine/async_llm.py). A non-incremental ``dictConfig`` closes every
handler of the process (``logging.config._clearExistingHandlers``), Serve's
replica handlers included, and a closed ``MemoryHandler`` drops its target
(``MemoryHandler.close`` sets it to None). Two effects in an LLM replica:

* its Serve log file (``logs/serve/replica_qa_cpu-pool_*.log``) got nothing
  after the engine started (hence ``RAY_SERVE_LOG_TO_STDERR`` in llm.py);
* a Serve controller that recovers the replica (after the head, and with it
  the controller, was lost: GCS fault tolerance) calls the replica's
  ``is_allocated()``, which reads that target's file name
  (``ray/serve/_private/logging_utils.py get_component_logger_file_path``,
  Ray 2.60) and raised ``AttributeError: 'NoneType' object has no attribute
  'baseFilename'``: the controller stopped the healthy replica and started a
  new one, a vLLM cold start (about a minute of 503s for every question)
  instead of adopting it (tests/faults/test_control_plane.py).

The fix gives each closed ``MemoryHandler`` its target back once the engine
has started. Records logged meanwhile are not lost: a ``MemoryHandler``
without a target keeps its buffer and flushes it at the next record; the
target (a ``RotatingFileHandler``) reopens its file on the next write.
"""

from __future__ import annotations

from ray.serve.llm import LLMServer

from serve_app.logs import serve_log_handlers_kept


class QALLMServer(LLMServer):
    """``LLMServer`` whose replica keeps logging through Serve's handlers."""

    async def start(self) -> None:
        with serve_log_handlers_kept():
            await super().start()
