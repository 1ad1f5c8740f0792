"""Long runs: finished chunks kept on disk for a resumed call, and chunks re-run after a crash.

One :class:`CallLedger` per call holds this bookkeeping; the engine asks it, before it
submits a chunk, whether the chunk finished in an earlier call (:meth:`CallLedger.resume`),
tells it each chunk that finishes now (:meth:`CallLedger.keep`), and asks it whether a
chunk whose worker died may run again (:meth:`CallLedger.may_retry`).

The store follows joblib's ``Memory``: one folder per function, one per call below it,
entries that are pickles written atomically (a temporary file, ``fsync``, ``os.replace``),
so that a writer killed half-way leaves no file that could load as a result. Unlike
``Memory``, which caches whole calls, each chunk is an entry of its own, named by
everything its result depends on:

- the function: its module, qualified name and body (the code object without line
  numbers, its constants, defaults, closure values, and the helpers and data of its own
  module that it refers to), so that an edited function never gets an old result;
- the arguments given whole to every chunk, and the chunk's own piece of the split
  argument(s), by content (numpy buffers are hashed in place, never copied);
- the chunk's random stream (seed and index).

A re-run with another chunking therefore finds no entry for a chunk whose content
changed, and one with another seed none at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import re
import sys
import tempfile
import threading
import types
import warnings
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import cloudpickle
import numpy as np

from ._options import ParallelOptions
from ._runner import ChunkOutcome
from ._seeding import chunk_seed
from ._split import Chunk
from .errors import SerializationError, WorkerCrashedError

__all__ = ["CallLedger", "content_digest", "function_digest", "open_ledger"]

logger = logging.getLogger("conc_ml")

#: bumped when what a key covers or how an entry is written changes: old entries then miss
FORMAT_VERSION: Final = 2
_MAGIC: Final = b"conc-ml chunk v1\n"
#: an entry's checksum: CRC-32 finds accidental damage at several GB/s (the name is the key)
_CHECKSUM_SIZE: Final = 4
#: temporary files of entries being written (``.tmp-<pid>-...``)
_TEMP_PREFIX: Final = ".tmp-"
#: the ``worker`` of an outcome loaded from the checkpoint
RESUMED_FROM_CHECKPOINT: Final = "checkpoint"


# -- content digests ------------------------------------------------------------------------


class _DigestSink:
    """A file-like object that hashes what a pickler writes instead of keeping it."""

    def __init__(self, digest: Any) -> None:
        self.digest = digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)


def _rebuild_array(dtype: np.dtype[Any], shape: tuple[int, ...], data: Any) -> np.ndarray[Any, Any]:
    # Never called: the reduction below exists to be hashed, not loaded.
    return np.frombuffer(data, dtype=dtype).reshape(shape)  # pragma: no cover


_SET_TYPES: Final = (set, frozenset)


class _ContentPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """A pickler whose output depends on values only, with numpy data passed out of band.

    Every array (subclasses too, whose own reduction may name a shared segment or a file
    instead of its content) is reduced to its dtype, shape and bytes, the bytes handed
    to ``buffer_callback`` without a copy when the array is contiguous.
    """

    def persistent_id(self, obj: Any) -> Any:
        # Set order follows string hashes, which differ from one process to the next; and
        # the pickler calls ``reducer_override`` for no exact set, only this for every object.
        if type(obj) in _SET_TYPES:
            return (type(obj).__name__, sorted(content_digest(item) for item in obj))
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
            data = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj)
            buffer = pickle.PickleBuffer(data)  # type: ignore[arg-type]  # numpy's stubs lack __buffer__
            return (_rebuild_array, (obj.dtype, obj.shape, buffer))
        return super().reducer_override(obj)


def content_digest(value: object) -> bytes:
    """A digest of ``value`` by content: equal for equal values pickled alike.

    The pickle stream is hashed as it is written, and numpy buffers in place, so the cost
    is one pass of SHA-256 over the data and no copy of it (SHA-256 rather than BLAKE2b:
    with the CPU's SHA instructions, which OpenSSL uses, it is about twice as fast).

    :raises SerializationError: if ``value`` cannot be pickled.
    """
    stream = hashlib.sha256()
    buffers = hashlib.sha256()

    def take_buffer(buffer: pickle.PickleBuffer) -> None:
        raw = buffer.raw()
        buffers.update(len(raw).to_bytes(8, "little"))
        buffers.update(raw)

    try:
        _ContentPickler(_DigestSink(stream), protocol=5, buffer_callback=take_buffer).dump(value)
    except Exception as error:
        raise SerializationError(
            f"checkpoint= identifies a call by the content of its arguments, but a value of type "
            f"{type(value).__module__}.{type(value).__qualname__} cannot be pickled "
            f"({type(error).__name__}: {error}); pass picklable data, or drop checkpoint="
        ) from error
    return stream.digest() + buffers.digest()


def _code_parts(code: types.CodeType) -> list[Any]:
    """What a code object computes, without its file name or line numbers."""
    parts: list[Any] = [
        code.co_code,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
    ]
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            parts.append(_code_parts(constant))
        else:
            parts.append(constant)
    return parts


def _names_used(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _names_used(constant)
    return names


def _as_function(value: object) -> types.FunctionType | None:
    """The plain function behind a decorated helper, a staticmethod or a classmethod."""
    if isinstance(value, staticmethod | classmethod):
        value = value.__func__
    wrapped = getattr(value, "__wrapped__", None)
    if callable(value) and isinstance(wrapped, types.FunctionType):
        value = wrapped  # a decorated helper (another @parallel function): its body counts
    return value if isinstance(value, types.FunctionType) else None


def _class_part(cls: type, module: str | None, seen: set[int]) -> Any:
    if cls.__module__ != module or id(cls) in seen:
        return ("class", cls.__module__, cls.__qualname__)
    seen.add(id(cls))
    members = []
    for name, member in sorted(vars(cls).items()):
        if isinstance(member, property):
            members.append((name, [_value_part(f, module, seen) for f in (member.fget, member.fset, member.fdel)]))
        elif _as_function(member) is not None or not (callable(member) or name.startswith("__")):
            members.append((name, _value_part(member, module, seen)))
    return ("class", cls.__module__, cls.__qualname__, members)


def _value_part(value: object, module: str | None, seen: set[int]) -> Any:
    """How a global, closure value or default of the function enters its digest."""
    if isinstance(value, types.ModuleType):
        return ("module", value.__name__)
    function = _as_function(value)
    if function is not None:
        if function.__module__ == module:
            return _function_parts(function, seen)
        # Code of other modules (libraries) is identified by name, as joblib does.
        return ("function", function.__module__, function.__qualname__)
    if isinstance(value, type):
        return _class_part(value, module, seen)
    return _data_part(value)


def _data_part(value: object) -> Any:
    if callable(value) and not isinstance(value, np.ndarray):
        return ("callable", type(value).__module__, type(value).__qualname__, getattr(value, "__qualname__", None))
    try:
        return ("value", content_digest(value))
    except SerializationError:
        # State that cannot be pickled (a lock, a connection) is identified by its type.
        return ("unpicklable", type(value).__module__, type(value).__qualname__)


#: how deep the attributes of another module are followed (``cfg.train.RATE``: two steps)
_ATTRIBUTE_DEPTH: Final = 3


def _attributes_read(owner: object, names: set[str], module: str | None, depth: int = 0) -> list[Any]:
    """The data that the code may read as attributes of ``owner``, another module or its class.

    Another module and its classes are identified by name, so a value read through them
    (``settings.RATE``, ``Config.RATE``) would go unseen: the data attributes named in the
    code (``co_names`` lists attribute names too) count by content. Submodules are followed
    (``cfg.train.RATE``); functions and classes stay identified by name; the standard
    library is left out. Only the objects' own ``__dict__`` is read, so a module's lazy
    ``__getattr__`` never runs.
    """
    if isinstance(owner, types.ModuleType):
        home = owner.__name__
        namespaces: list[Mapping[str, Any]] = [vars(owner)]
    elif isinstance(owner, type) and owner.__module__ != module:
        home = owner.__module__
        namespaces = [vars(klass) for klass in owner.__mro__]
    else:
        return []
    if home.partition(".")[0] in sys.stdlib_module_names:
        # The standard library's data is constant for a Python, or the process's state
        # (``os.environ``, ``sys.path``), which would make every resubmitted job miss.
        return []
    parts: list[Any] = []
    for name in sorted(names):
        for namespace in namespaces:
            if name in namespace:
                value = namespace[name]
                break
        else:
            continue
        if isinstance(value, types.ModuleType | type):
            if depth + 1 < _ATTRIBUTE_DEPTH and value is not owner:
                inner = _attributes_read(value, names, module, depth + 1)
                if inner:
                    parts.append((name, inner))
        elif not callable(value) and not isinstance(value, staticmethod | classmethod | property):
            parts.append((name, _data_part(value)))
    return parts


def _function_parts(func: types.FunctionType, seen: set[int]) -> Any:
    if id(func) in seen:
        return ("recursive", func.__module__, func.__qualname__)
    seen.add(id(func))
    module = func.__module__
    code = func.__code__
    parts: list[Any] = ["function", module, func.__qualname__, _code_parts(code)]
    parts.append(_value_part(func.__defaults__, module, seen))
    parts.append(_value_part(func.__kwdefaults__, module, seen))
    names = _names_used(code)
    for cell in func.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell: a name assigned later in the enclosing function
            parts.append(("empty cell",))
            continue
        parts.append(_value_part(contents, module, seen))
        parts.append(_attributes_read(contents, names, module))
    for name in sorted(names):
        if name in func.__globals__:
            value = func.__globals__[name]
            parts.append((name, _value_part(value, module, seen), _attributes_read(value, names, module)))
    return parts


def function_digest(func: Callable[..., Any]) -> bytes:
    """A digest of a function's identity and body that survives moving it in its file.

    Covers the module, qualified name, code (without line numbers), constants, defaults,
    closure values, and the functions, classes and data of the function's own module that
    its code names (recursively). Functions of other modules are identified by name.
    """
    target: Any = func
    while not isinstance(target, types.FunctionType) and callable(getattr(target, "__wrapped__", None)):
        target = target.__wrapped__
    if isinstance(target, types.FunctionType):
        parts = _function_parts(target, set())
    else:  # a builtin or a callable object: by name, and by content where it has state
        parts = _value_part(target, None, set())
    return content_digest(parts)


# -- the store ------------------------------------------------------------------------------


def _folder_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip(".") or "function"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside conc-ml, so a warning names the user's line.

    Counted from the caller of this function's caller (the one that calls ``warnings.warn``);
    2 (that caller's caller) when no frame outside conc-ml is on this thread's stack, as in
    the worker thread where the async engine reads and writes entries.
    """
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame: types.FrameType | None = sys._getframe(2)
    level = 2
    while frame is not None:
        if not frame.f_code.co_filename.startswith(package):
            return level
        frame = frame.f_back
        level += 1
    return 2


class CheckpointStore:
    """The entries of one call: ``ROOT/<module.function>/<call key>/chunk-<index>-<key>.pkl``.

    :param folder: the call's folder (created by :meth:`prepare`).
    :param description: what ``call.json`` says about the call, for a person clearing it.
    :param root: the ``checkpoint`` folder the user gave, for messages.
    """

    def __init__(self, folder: Path, description: Mapping[str, Any], root: Path | None = None):
        self.folder = folder
        self.root = folder if root is None else root
        self._description = description
        self._created = False
        #: why the folder cannot take entries, found by :meth:`prepare`
        self._unusable: OSError | None = None
        #: entries that could not be written during this call
        self.write_failures = 0

    def prepare(self) -> None:
        """Create the call's folder and check that an entry can be written there.

        Done before any chunk runs, so that a folder that cannot be used (a file on its
        path, no permission, a read-only disk) is reported before hours of work rather
        than after the first chunk. The error is kept, not raised: a finished checkpoint
        on a read-only disk still resumes, and :meth:`require_writable` raises it only
        when a chunk must run.
        """
        try:
            self._create_folder()
            descriptor, probe = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-", dir=self.folder)
            os.close(descriptor)
            os.unlink(probe)
        except OSError as error:
            self._unusable = error

    def require_writable(self, chunk: int) -> None:
        """Raise, before chunk ``chunk`` runs, if its result could not be kept.

        :raises OSError: of the type the system gave (``PermissionError``,
            ``NotADirectoryError``...), saying which folder and what is allowed.
        """
        error = self._unusable
        if error is None:
            return
        reason = error.strerror or str(error)
        where = f" ({error.filename})" if error.filename and error.strerror else ""
        message = (
            f"checkpoint folder {str(self.root)!r} cannot keep results: {reason}{where}. No chunk ran "
            f"(chunk {chunk} was next): checkpoint= needs a folder that this process can create and write, "
            "or None to run without one"
        )
        raise (type(error)(error.errno, message) if error.errno is not None else type(error)(message)) from error

    def note_write_failure(self, index: int, error: OSError) -> None:
        """A finished chunk could not be written (disk full, folder removed): warn once, go on.

        Its result is in memory and the call goes on: failing it would lose every chunk
        not yet kept, the very work a checkpoint is there to save.
        """
        self.write_failures += 1
        if self.write_failures == 1:
            warnings.warn(
                f"conc-ml: the result of chunk {index} could not be kept in checkpoint folder {self.folder} "
                f"({type(error).__name__}: {error}); the call goes on, but a re-run will run this chunk again "
                "(later failures of this call are counted in the log, not warned again)",
                RuntimeWarning,
                stacklevel=_user_stacklevel(),
            )

    def entry(self, index: int, key: bytes) -> Path:
        """Where chunk ``index`` with key ``key`` is kept."""
        return self.folder / f"chunk-{index:06d}-{key.hex()[:24]}.pkl"

    def load(self, path: Path) -> tuple[bool, Any]:
        """``(True, value)`` for an intact entry, ``(False, None)`` for none.

        A damaged entry (truncated, overwritten, from another version) is removed and
        reported with a :class:`RuntimeWarning`: its chunk then runs again.
        """
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):  # no entry (a folder of the path is missing)
            return False, None
        except OSError as error:
            self._discard(path, f"it cannot be read ({error})")
            return False, None
        header = len(_MAGIC) + _CHECKSUM_SIZE
        payload = memoryview(data)[header:]
        if data[: len(_MAGIC)] != _MAGIC or data[len(_MAGIC) : header] != _checksum(payload):
            self._discard(path, "its content does not match its checksum")
            return False, None
        try:
            return True, pickle.loads(payload)
        except Exception as error:
            self._discard(path, f"it cannot be unpickled ({type(error).__name__}: {error})")
            return False, None

    def save(self, path: Path, value: Any) -> None:
        """Write an entry atomically: a killed writer leaves a temporary file, never a half entry.

        :raises SerializationError: if ``value`` cannot be pickled.
        """
        try:
            payload = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            raise SerializationError(
                f"checkpoint= keeps each chunk's result as a pickle, but the result of type "
                f"{type(value).__module__}.{type(value).__qualname__} cannot be pickled "
                f"({type(error).__name__}: {error}); return plain data, or drop checkpoint="
            ) from error
        self._create_folder()
        descriptor, temporary = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-", dir=self.folder)
        try:
            with open(descriptor, "wb") as file:
                file.write(_MAGIC)
                file.write(_checksum(payload))
                file.write(payload)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def remove_orphans(self) -> None:
        """Remove temporary files whose writer died before it could rename them."""
        if not self.folder.is_dir():
            return
        for path in self.folder.glob(f"{_TEMP_PREFIX}*"):
            pid_text = path.name.removeprefix(_TEMP_PREFIX).split("-", 1)[0]
            if pid_text.isdigit() and not _pid_alive(int(pid_text)):
                with contextlib.suppress(OSError):
                    path.unlink()

    def _create_folder(self) -> None:
        if self._created:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        description = self.folder / "call.json"
        if not description.exists():
            with contextlib.suppress(OSError):
                description.write_text(json.dumps(self._description, indent=2) + "\n")
        self._created = True

    def _discard(self, path: Path, why: str) -> None:
        warnings.warn(
            f"conc-ml: checkpoint entry {path} is unusable: {why}; its chunk runs again",
            RuntimeWarning,
            stacklevel=_user_stacklevel(),
        )
        with contextlib.suppress(OSError):
            path.unlink()


def _checksum(payload: bytes | memoryview) -> bytes:
    return zlib.crc32(payload).to_bytes(_CHECKSUM_SIZE, "little")


# -- one call's bookkeeping -------------------------------------------------------------------


class CallLedger:
    """Retries and checkpoint of one call: what the engine asks before and after each chunk.

    :param retries: how many times a chunk whose worker died may run again.
    :param store_root: the ``checkpoint`` folder, or ``None`` for no checkpoint.
    :param func: the user's function (for the key).
    :param function_name: its qualified name, for messages.
    :param broadcast: the arguments given whole to every chunk, by name.
    :param split_names: the names of the split arguments.
    :param chunk_seed: the chunk's random stream, by index (``None``: the function takes none).
    """

    def __init__(
        self,
        *,
        retries: int = 0,
        store_root: str | os.PathLike[str] | None = None,
        func: Callable[..., Any] | None = None,
        function_name: str = "",
        broadcast: Mapping[str, Any] | None = None,
        split_names: tuple[str, ...] = (),
        chunk_seed: Callable[[int], np.random.SeedSequence | None] | None = None,
    ):
        self.retries = retries
        self._root = None if store_root is None else Path(store_root)
        self._func = func
        self._function_name = function_name
        self._broadcast = dict(broadcast or {})
        self._split_names = split_names
        self._chunk_seed = chunk_seed or (lambda index: None)
        self._attempts: dict[int, int] = {}
        self._resumed: set[int] = set()
        self._store: CheckpointStore | None = None
        self._call_key = b""
        self._chunk_keys: dict[int, bytes] = {}
        self._lock = threading.Lock()

    @property
    def checkpointing(self) -> bool:
        """Whether finished chunks are kept on disk."""
        return self._root is not None

    @property
    def resumed(self) -> int:
        """How many chunks came from the checkpoint."""
        return len(self._resumed)

    @property
    def folder(self) -> Path | None:
        """This call's folder in the checkpoint, once the first chunk was looked up."""
        return None if self._store is None else self._store.folder

    def _open_store(self) -> CheckpointStore:
        # The async engine looks chunks up and writes them from two worker threads.
        with self._lock:
            return self._open_store_once()

    def _open_store_once(self) -> CheckpointStore:
        if self._store is None:
            assert self._root is not None
            assert self._func is not None
            module = getattr(self._func, "__module__", None) or "unknown"
            self._call_key = content_digest(
                (
                    FORMAT_VERSION,
                    function_digest(self._func),
                    sorted((name, content_digest(value)) for name, value in self._broadcast.items()),
                    self._split_names,
                )
            )
            self._broadcast = {}  # digested: do not keep the arguments alive longer than the call
            function_folder = self._root / _folder_name(f"{module}.{self._function_name}")
            self._store = CheckpointStore(
                function_folder / self._call_key.hex()[:32],
                {"function": f"{module}.{self._function_name}", "format": FORMAT_VERSION},
                root=self._root,
            )
            self._store.prepare()
            self._store.remove_orphans()
        return self._store

    def _chunk_key(self, chunk: Chunk) -> bytes:
        key = self._chunk_keys.get(chunk.index)
        if key is None:
            seed = self._chunk_seed(chunk.index)
            stream = None if seed is None else (seed.entropy, seed.spawn_key, seed.pool_size)
            key = content_digest((self._call_key, chunk.index, stream, content_digest(chunk.values)))
            self._chunk_keys[chunk.index] = key
        return key

    def resume(self, chunk: Chunk) -> ChunkOutcome | None:
        """The outcome of ``chunk`` kept by an earlier call, or ``None`` if it must run."""
        if self._root is None:
            return None
        store = self._open_store()
        found, value = store.load(store.entry(chunk.index, self._chunk_key(chunk)))
        if not found:
            store.require_writable(chunk.index)
            return None
        self._resumed.add(chunk.index)
        return ChunkOutcome(chunk.index, value, None, RESUMED_FROM_CHECKPOINT)

    def keep(self, chunk: Chunk, outcome: ChunkOutcome) -> None:
        """Write a chunk that finished now to the checkpoint, before anyone sees its result."""
        if self._root is None or chunk.index in self._resumed or outcome.failure is not None:
            return
        store = self._open_store()
        try:
            store.save(store.entry(chunk.index, self._chunk_key(chunk)), outcome.value)
        except OSError as error:
            store.note_write_failure(chunk.index, error)
        # The content of the chunk is needed no more: drop its key to keep memory flat.
        self._chunk_keys.pop(chunk.index, None)

    def may_retry(self, translated: BaseException | None, chunk: Chunk) -> bool:
        """Count an attempt of ``chunk`` that ended in a worker's death; may it run again?"""
        if not isinstance(translated, WorkerCrashedError):
            return False
        attempts = self._attempts.get(chunk.index, 1)
        if attempts > self.retries:
            return False
        self._attempts[chunk.index] = attempts + 1
        return True

    def note_attempts(self, error: BaseException, chunk: Chunk) -> None:
        """Say on a final crash how many times its chunk ran, or how to have it run again."""
        if not isinstance(error, WorkerCrashedError):
            return
        if not self.retries:
            if "retries=" not in str(error):
                error.add_note(
                    "conc-ml: retries=N (in @parallel, .options() or config()) runs a chunk whose worker "
                    "died again, up to N times, with the same piece of data and random stream"
                )
            return
        attempts = self._attempts.get(chunk.index, 1)
        error.add_note(
            f"conc-ml: chunk {chunk.index} was attempted {attempts} time(s) (retries={self.retries}); "
            "its worker died every time"
        )

    def report(self, function_name: str, n_chunks: int | None) -> None:
        """Log how many chunks came from the checkpoint, and how many could not be kept (as the call ends)."""
        if self._store is not None and self._store.write_failures:
            logger.warning(
                "%s(): %d finished chunk(s) could not be written to checkpoint %s; a re-run runs them again",
                function_name,
                self._store.write_failures,
                self._store.folder,
            )
        if self._resumed and self._store is not None:
            of = f" of {n_chunks}" if n_chunks is not None else ""
            logger.info(
                "%s(): resumed %d%s chunks from checkpoint %s",
                function_name,
                len(self._resumed),
                of,
                self._store.folder,
            )


def progress_note(ledger: CallLedger) -> str:
    """The progress bar's note on resumed chunks."""
    return f"{ledger.resumed} resumed"


def open_ledger(
    options: ParallelOptions,
    *,
    func: Callable[..., Any],
    function_name: str,
    arguments: Mapping[str, Any],
    split_names: tuple[str, ...],
    root: np.random.SeedSequence | None,
    reference: bool = False,
) -> CallLedger:
    """The ledger of one call, from its resolved options.

    :param options: the call's options (``retries``, ``checkpoint``, ``seed``).
    :param func: the user's function.
    :param function_name: its qualified name, for messages.
    :param arguments: the call's bound arguments, by name (``rng`` not among them).
    :param split_names: the names of the split arguments.
    :param root: the root of the chunks' streams, or ``None`` if the function takes no ``rng``.
    :param reference: the sequential reference run, which neither reads nor writes a checkpoint.
    :raises ValueError: if ``checkpoint`` is asked for a function drawing from fresh entropy.
    """
    checkpoint = None if reference else options.checkpoint
    if checkpoint is not None and root is not None and options.seed is None:
        raise ValueError(
            f"{function_name}() takes an 'rng' but seed=None draws fresh entropy at every call, so a "
            "re-run could not give the same result: checkpoint= needs a seed (an int or a SeedSequence) "
            "in @parallel, .options() or config()"
        )
    if checkpoint is None:
        return CallLedger(retries=options.retries)
    broadcast = {name: value for name, value in arguments.items() if name not in split_names}
    return CallLedger(
        retries=options.retries,
        store_root=checkpoint,
        func=func,
        function_name=function_name,
        broadcast=broadcast,
        split_names=split_names,
        chunk_seed=None if root is None else (lambda index: chunk_seed(root, index)),
    )
