"""The one way spamtl runs independent work side by side: a ``concurrent.futures.Executor`` from :func:`executor`.

Work units are top-level functions over explicit arguments, so any executor runs them.  Fork pools get large
arrays without pickling them: :func:`share` registers an object before the fork (the workers inherit it
copy-on-write) and :func:`resolve` gives it back on either side.  A fork while another thread holds a lock
leaves it held in the child, so process pools fall back to in-process work unless every other live thread
is marked with :func:`mark_fork_safe`.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

__all__ = ["SerialExecutor", "executor", "share", "release", "resolve", "one_blas_thread", "fork_pool_is_safe",
           "mark_fork_safe", "return_free_memory"]

_REGISTRY: dict[int, Any] = {}
_KEYS = itertools.count()
_FORK_SAFE_ATTR = "_spamtl_fork_safe"


class SerialExecutor(Executor):
    """Runs each submitted call at once in this process (the reference the parallel paths must match)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future

    def map(self, fn: Callable[..., Any], *iterables: Any, timeout: float | None = None,
            chunksize: int = 1) -> Any:
        return map(fn, *iterables)  # lazily, in order, like the pools' map


def executor(workers: int, *, kind: str = "threads", alongside: bool = False, name: str = "spamtl") -> Executor:
    """An executor of ``workers`` threads or forked processes (``kind``), or a :class:`SerialExecutor`.

    ``workers`` <= 1 always means in this process.  Processes: never more than the cores, and none while
    another thread runs (:func:`fork_pool_is_safe`); ``alongside`` (the caller keeps working while the
    workers run: cross-fitting beside the final fit) leaves the caller a core, and one worker is then still
    a process.  Forked workers die with the process that forked them.  Threads are named ``name``-N.
    """
    if workers <= 1:
        return SerialExecutor()
    if kind == "threads":
        return ThreadPoolExecutor(workers, thread_name_prefix=name)
    if kind != "processes":
        raise ValueError(f"kind must be 'threads' or 'processes', got {kind!r}")
    cores = os.cpu_count() or 1
    workers = min(workers, cores - 1) if alongside else min(workers, cores)
    if workers < (1 if alongside else 2) or not fork_pool_is_safe():
        return SerialExecutor()
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_die_with_parent)


class _Handle:
    """A key into this process's registry; forked workers see the same object behind it."""

    def __init__(self, key: int) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return _lookup, (self.key,)


def _lookup(key: int) -> Any:
    return _REGISTRY[key]


def share(pool: Executor, obj: Any) -> Any:
    """What to submit to ``pool`` for ``obj``: a registry handle for a fork pool (made before its first
    submit, so that the workers inherit it; :func:`release` it afterwards), the object itself otherwise."""
    if isinstance(pool, ProcessPoolExecutor) and getattr(pool, "_mp_context", None) is not None \
            and pool._mp_context.get_start_method() == "fork":
        key = next(_KEYS)
        _REGISTRY[key] = obj
        return _Handle(key)
    return obj


def release(shared: Any) -> None:
    """Forget what :func:`share` registered (nothing for an object passed as it is)."""
    if isinstance(shared, _Handle):
        _REGISTRY.pop(shared.key, None)


def resolve(obj: Any) -> Any:
    """The object behind a handle (in a worker, unpickling already gave the object)."""
    return _REGISTRY[obj.key] if isinstance(obj, _Handle) else obj


def one_blas_thread() -> Any:
    """A context in which BLAS runs on one thread.

    The parallelism is spamtl's own (workers, chunk threads); BLAS threads beside it only spin and steal
    cores, and a refit's L-BFGS is level-1 BLAS on vectors where hand-offs cost more than they save.
    threadpoolctl lets one thread at a time change the limit: enter this in the thread that starts the work.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it, BLAS keeps its own setting
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _die_with_parent() -> None:
    """Worker initializer: on Linux, be sent SIGKILL when the parent dies (killed, or out of memory), so no
    worker is left holding its memory; a worker whose parent is already gone exits at once."""
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
    """Give the C allocator's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing):
    memory a long-lived process freed otherwise stays counted against the machine until it exits."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def mark_fork_safe(thread: threading.Thread) -> threading.Thread:
    """Declare that ``thread`` never holds a lock a forked worker could need (see the module docstring)."""
    setattr(thread, _FORK_SAFE_ATTR, True)
    return thread


def fork_pool_is_safe() -> bool:
    """Whether this process may fork workers now: fork is available and every other live thread is one
    spamtl marked fork-safe."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    me = threading.current_thread()
    return all(t is me or getattr(t, _FORK_SAFE_ATTR, False) for t in threading.enumerate())
