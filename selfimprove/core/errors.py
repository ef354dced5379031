"""The user-facing errors. A message says what is wrong and ends with the fix."""

from __future__ import annotations

import errno
import json
import shutil
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """An error caused by input (a loop file, a flag, a workspace): shown as lines, never a traceback."""

    def __init__(self, *lines: str):
        super().__init__("\n".join(lines))
        self.lines = list(lines)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFull(UserError):
    """A write that failed because the disk (or a quota, or a file size limit) is full."""

    def __init__(self, what: str | Path, cause: BaseException | None = None):
        self.what, self.cause = str(what), cause
        super().__init__(f"no space left on device while writing {what}; free space there (df -h) and run "
                         f"again: finished stages and shards are kept")


def is_disk_full(error: BaseException, where: str | Path | None = None) -> bool:
    """Whether an exception, or one it was raised from, is a full disk. Some writers hide the errno
    (torch.save raises "file write failed", safetensors "os error 28"), so their messages count too, and
    so does any failed write while the filesystem of `where` has under 1 MiB free."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL:
            return True
        text = str(seen)
        if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    if where is not None and isinstance(error, (OSError, RuntimeError)):
        existing = Path(where)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            return shutil.disk_usage(existing).free < 2**20
        except OSError:
            return False
    return False


@contextmanager
def writing(what: str | Path, where: str | Path | None = None):
    """Turn a full disk while writing `what` (a shard, a model, a checkpoint; at the path `where`, by
    default `what` itself) into DiskFull naming it."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as error:
        if is_disk_full(error, where or what):
            raise DiskFull(what, error) from error
        raise


# --- the hub out of reach -------------------------------------------------------------------------------

# Exceptions that mean no connection (builtin, requests/urllib3, httpx, socket), matched by class name so
# that this module imports none of those libraries; and the hub's own words for "not cached, no network".
UNREACHABLE_TYPES = {"ConnectionError", "ConnectError", "ConnectTimeout", "NewConnectionError", "NameResolutionError",
                     "MaxRetryError", "gaierror", "LocalEntryNotFoundError", "OfflineModeIsEnabled"}
HUB_WORDS = ("We couldn't connect to", "outgoing traffic has been disabled", "on the Hub (")
HUB_TYPES = {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}


class HubUnreachable(UserError):
    """A model (or tokenizer, or data set) named by a hub id that is neither a local directory nor in the hub
    cache, with no way to download it: no network, or HF_HUB_OFFLINE set."""

    def __init__(self, reference: str | None, what: str = "model", cause: BaseException | None = None):
        import os

        self.reference, self.what, self.cause = reference, what, cause
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        why = "HF_HUB_OFFLINE is set and it is not in the hub cache" if offline else f"no connection to {endpoint}"
        if reference:
            named, download = f"{what} {reference}: not a local directory, and it", f"`hf download {reference}`"
        else:  # raised where no loader of ours named it: a backend's or the data loader's download
            named, download = f"a {what}", "`hf download ID` (`--repo-type dataset` for a data set)"
        super().__init__(f"{named} could not be downloaded from the Hugging Face hub ({why}); use a local copy: "
                         f"its path in the loop file, or run {download} (huggingface-cli download in older "
                         "versions) on a machine with network, copy the hub cache (~/.cache/huggingface/hub) here "
                         "and set HF_HUB_OFFLINE=1")


def _chain(error: BaseException):
    """The exception and those it was raised from or during, innermost last (each once: a chain set by
    hand may loop)."""
    seen, met = error, set()
    while seen is not None and id(seen) not in met:
        met.add(id(seen))
        yield seen
        seen = seen.__cause__ or seen.__context__


def _type_names(error: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(error).__mro__}


def is_unreachable(error: BaseException) -> bool:
    """Whether an exception, or one it was raised from, is a connection that could not be made (or a hub
    download refused offline)."""
    return any(_type_names(seen) & UNREACHABLE_TYPES or any(word in str(seen) for word in HUB_WORDS)
               for seen in _chain(error))


def is_hub_unreachable(error: BaseException) -> bool:
    """is_unreachable, and the hub's: a connection error of the OpenAI client (a judge's server) is not."""
    chain = list(_chain(error))
    hub = any(_type_names(seen) & HUB_TYPES or any(word in str(seen) for word in HUB_WORDS)
              or type(seen).__module__.split(".")[0] in ("huggingface_hub", "datasets") for seen in chain)
    return hub and is_unreachable(error)


@contextmanager
def from_hub(reference: str, what: str = "model"):
    """Turn a failed download of `reference` (a hub id, or a local path that is not there) into one
    HubUnreachable line naming it and how to use a local copy. Nested, the outer names it: the reward
    model's loader says reward.model where the tokenizer loader inside it says model."""
    try:
        yield
    except HubUnreachable as error:
        if error.reference != reference:
            raise
        raise HubUnreachable(reference, what, error.cause) from error.cause
    except UserError:
        raise
    except Exception as error:
        if is_unreachable(error):
            raise HubUnreachable(reference, what, error) from error
        raise


# --- a stage's last line ------------------------------------------------------------------------------

# Exceptions that are programming errors when selfimprove's own code raises them (not the user's code, not
# a library's): the line says so.
BUG_TYPES = (AssertionError, AttributeError, NameError, TypeError, KeyError, IndexError, ZeroDivisionError,
             NotImplementedError, RecursionError)
OUT_OF_MEMORY = ("OutOfMemoryError", "MemoryError")


def stage_main(main) -> None:
    """Run a stage's main so that however it fails, it ends with one last line, `error: <the cause>`,
    which `selfimprove run` shows with the stage's name (selfimprove.pipeline.runner), and a non-zero
    exit. A UserError (bad input, an unhealthy judge) and a full disk are that line alone; any other
    exception, and a UserError raised from one (a user's reward function that raised), first print
    the traceback to stderr, which DVC collects in the run's log (runs/RUN/repro.log). Here rather than in
    selfimprove.stages._io: this module is in no stage's code fingerprint, and how a failure is worded
    changes no output."""
    import sys
    import traceback

    try:
        main()
    except Exception as error:  # noqa: BLE001 - whatever a stage raises ends in one line
        line, code = one_line(error)
        if _with_traceback(error):
            traceback.print_exc()
        print(f"error: {line}", file=sys.stderr, flush=True)
        sys.exit(code)


def one_line(error: BaseException) -> tuple[str, int]:
    """(the one line that names what went wrong and what to do, the exit code): 2 for what the user can
    fix (input, disk, network), 1 for anything else."""
    if isinstance(error, UserError):
        return str(error), 2
    if is_disk_full(error):
        return str(DiskFull(getattr(error, "filename", None) or "the stage outputs")), 2
    if is_hub_unreachable(error):
        return f"{HubUnreachable(None, 'model or data set')} ({exception_text(error)})", 2
    try:
        return describe(error), 1
    except Exception:  # noqa: BLE001 - wording the failure must not hide it
        return f"{exception_text(error)}; the traceback is in the log", 1


def _with_traceback(error: BaseException) -> bool:
    """Whether the log needs the traceback: not for a line that says it all (a UserError of the stage's
    own, a full disk), yes for anything raised from code (a UserError made of another exception too)."""
    if isinstance(error, DiskFull) or (not isinstance(error, UserError) and is_disk_full(error)):
        return False
    return not isinstance(error, UserError) or error.__cause__ is not None


def exception_text(error: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line, cut to limit characters."""
    message = " ".join(str(error).split())
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def quoted(text: str, limit: int = 60) -> str:
    """A user's text (a question, a response) shortened, quoted as Python does."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def describe(error: BaseException) -> str:
    """The line for an exception no code worded: its type and message, the file being read where there is
    one, where it was raised, and what to do; a programming error raised in selfimprove's own code says
    it looks like a bug."""
    text, where = exception_text(error), _raised_at(error)
    reading = _file_being_read(error)
    if isinstance(error, UnicodeDecodeError):
        return (f"{reading or 'a file the stage reads'}: not UTF-8 text ({text}); save it as UTF-8, e.g. "
                f"`iconv -f latin1 -t utf-8 {reading or 'FILE'} > utf8.jsonl`, and use that file")
    if isinstance(error, json.JSONDecodeError):
        lines = error.doc.splitlines() or [""]
        line = lines[min(error.lineno, len(lines)) - 1]  # a JSONL line cut short fails on the line after its end
        return (f"{reading or 'a file the stage reads'}: the line {quoted(line)} is not valid JSON ({text}); "
                "fix or drop it")
    if _type_names(error) & set(OUT_OF_MEMORY):
        return f"out of memory ({text}, at {where}); lower the stage's batch_size (or max_new_tokens, max_length)"
    if isinstance(error, BUG_TYPES) and _in_package(error):
        return (f"internal error, a bug in selfimprove unless an input file is malformed: {text} (at {where}); "
                "the traceback is in the log: please report it with the traceback")
    return f"{text} (at {where}); the traceback is in the log"


PACKAGE_DIR = Path(__file__).resolve().parent.parent  # .../selfimprove


def _frames(error: BaseException) -> list:
    """(frame, line number) of the exception's traceback, innermost last."""
    import traceback

    return list(traceback.walk_tb(error.__traceback__))


def _raised_at(error: BaseException) -> str:
    """file:line in function, where the exception was raised; a file of selfimprove or of a library
    from its package's folder, so the line stays short."""
    frames = _frames(error)
    if not frames:
        return "an unknown place"
    frame, line = frames[-1]
    return f"{_short_path(frame.f_code.co_filename)}:{line} in {frame.f_code.co_name}"


def _short_path(filename: str) -> str:
    import os

    for marker in (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    path = Path(filename)
    if path.is_relative_to(PACKAGE_DIR):
        return str(path.relative_to(PACKAGE_DIR.parent))
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        return str(path.relative_to(Path.cwd()))
    return filename


def _in_package(error: BaseException) -> bool:
    """Whether the innermost frame is selfimprove's code."""
    frames = _frames(error)
    return bool(frames) and Path(frames[-1][0].f_code.co_filename).is_relative_to(PACKAGE_DIR)


def _file_being_read(error: BaseException) -> str | None:
    """The path of the innermost text file open in the traceback's frames: the file a failed decode or
    parse was reading (the exception itself does not name it)."""
    import io

    for frame, _ in reversed(_frames(error)):
        for value in frame.f_locals.values():
            if isinstance(value, io.TextIOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
    return None
