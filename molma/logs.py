"""Progress messages for Python API users.

molma reports progress through :mod:`logging` (loggers ``molma.*``). The ``molma`` command configures
logging itself; a script that calls the API without configuring logging would see nothing but warnings
(Python's last-resort handler), so the long-running entry points (reward-model training, RL training,
evaluation) call :func:`ensure_progress_logging`: when neither the root logger nor the ``molma`` logger
has a handler, it gives ``molma`` one that prints INFO messages to stderr. Configure logging yourself
(``logging.basicConfig(...)``) before the first call and molma leaves it alone; call
:func:`configure_logging` to choose the level.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "molma-progress"


def configure_logging(level: int | str = logging.INFO) -> logging.Logger:
    """Print molma's messages at ``level`` and above to stderr (one handler on the ``molma`` logger,
    which then no longer passes its records to the root logger, so nothing is printed twice)."""
    logger = logging.getLogger("molma")
    handler = next((h for h in logger.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def ensure_progress_logging() -> None:
    """:func:`configure_logging` at INFO, unless logging is configured already (see the module docstring)."""
    logger = logging.getLogger("molma")
    if logging.getLogger().handlers or logger.handlers or logger.level != logging.NOTSET:
        return
    configure_logging(logging.INFO)
