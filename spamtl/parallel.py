"""Run independent pieces of training side by side, behind the ``concurrent.futures.Executor`` interface.

Training's independent work (the cross-fitting folds, the final fit) is
written as plain top-level functions over explicit arguments, submitted to an
executor.  :func:`training_executor` gives the one-machine executor: worker
processes forked from the trainer (both cores of this machine), or None for
in-process work.  Another executor with ``submit`` (e.g. a
``dask.distributed.Client``) runs the same functions on other machines; see
README, "Scaling".

Large arrays reach forked workers without being pickled: :func:`inherit`
wraps an object in a handle that pickles as a key into a registry which the
workers inherited at fork time (copy-on-write memory, no copy).  Serial and
distributed executors never pickle the handle's key for another process
they did not fork, so :func:`resolve` accepts either the handle or the
object itself.

Forking is only safe while no other thread runs: a thread that holds a lock
at the moment of the fork (a module being imported, a BLAS call, a database
driver's mutex) leaves that lock held for ever in the child, and the worker
blocks on it the first time it needs it (a train run from a thread while
another thread recorded feedback did exactly that, and never returned).  So
:func:`training_executor` and :func:`fork_pool_is_safe` fall back to
in-process work whenever another thread is alive, except threads spamtl
starts itself and marks with :func:`mark_fork_safe` (the training lock's
heartbeat, which holds nothing a worker needs).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

__all__ = ["SerialExecutor", "Inherited", "inherit", "release", "share", "resolve", "training_executor",
           "fork_pool_is_safe", "mark_fork_safe", "return_free_memory"]

_REGISTRY: dict[int, Any] = {}
_KEYS = itertools.count()


class SerialExecutor(Executor):
    """Runs each submitted call at once in this process (the reference the parallel paths must match)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future


class Inherited:
    """A handle to an object registered in this process; forked workers see the same object."""

    def __init__(self, key: int) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return _lookup, (self.key,)


def _lookup(key: int) -> Any:
    return _REGISTRY[key]


def inherit(obj: Any) -> Inherited:
    """Register ``obj`` for workers forked from now on; pass the returned handle to ``submit``."""
    key = next(_KEYS)
    _REGISTRY[key] = obj
    return Inherited(key)


def release(handle: Inherited) -> None:
    _REGISTRY.pop(handle.key, None)


def share(executor: Executor, obj: Any) -> Any:
    """What to pass to ``executor.submit`` for ``obj``: a handle for a fork pool (register before its
    first submit), the object itself otherwise (in-process: no copy; a distributed client ships it)."""
    if isinstance(executor, ProcessPoolExecutor) and getattr(executor, "_mp_context", None) is not None \
            and executor._mp_context.get_start_method() == "fork":
        return inherit(obj)
    return obj


def resolve(obj: Any) -> Any:
    """The object behind a handle (unpickled handles already are the object)."""
    return _REGISTRY[obj.key] if isinstance(obj, Inherited) else obj


def _die_with_parent() -> None:
    """Worker initializer: on Linux, be sent SIGKILL when the trainer dies (killed, or out of memory), so
    no worker is left holding its fold's memory; a worker whose parent is already gone exits at once."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own broken-pipe handling remains
        return
    if os.getppid() == 1:
        os._exit(1)


def return_free_memory() -> None:
    """Give the C allocator's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    Memory a worker frees stays in its heap, counted against the machine, until the process exits; the
    cross-fitting workers finish their folds long before the trainer's final fit does, and at 10,000
    users kept 1.5 GB each for the rest of it.
    """
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


_FORK_SAFE_ATTR = "_spamtl_fork_safe"


def mark_fork_safe(thread: threading.Thread) -> threading.Thread:
    """Declare that ``thread`` never holds a lock a forked worker could need (see the module docstring)."""
    setattr(thread, _FORK_SAFE_ATTR, True)
    return thread


def fork_pool_is_safe() -> bool:
    """Whether this process may fork workers now: fork is available and every other live thread is
    one spamtl marked fork-safe."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    me = threading.current_thread()
    return all(t is me or getattr(t, _FORK_SAFE_ATTR, False) for t in threading.enumerate())


def training_executor(workers: int, *, alongside: bool = False) -> Executor:
    """Worker processes forked on first use (``workers`` <= 1, no fork, or other threads running: run in
    this process, see :func:`fork_pool_is_safe`).

    ``alongside``: the caller keeps working while the workers run (cross-fitting beside the final fit), so
    it takes one core itself: at most ``cpu_count - 1`` workers, and one worker is still a process (but
    ``workers=1`` always means in this process: the setting that trades time for memory).  On 2
    cores a second fold worker only shared the trainer's core and added its memory (~1 GB at 10,000 users).

    Fork, not spawn: the workers start with the trainer's arrays mapped (see :func:`inherit`), and
    register nothing themselves.  They die with the trainer (a 3,000-user train killed by the OOM
    killer left its two fold workers blocked for ever).
    """
    if workers <= 1:
        return SerialExecutor()
    cores = os.cpu_count() or 1
    workers = min(workers, cores - 1) if alongside else min(workers, cores)
    if workers < (1 if alongside else 2) or not fork_pool_is_safe():
        return SerialExecutor()
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_die_with_parent)
