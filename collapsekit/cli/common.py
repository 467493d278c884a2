"""What every command shares: consoles, error translation, progress rendering, JSON output."""

from __future__ import annotations

import errno
import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from collapsekit.errors import CollapsekitError, Terminated
from collapsekit.outputs import os_error_in
from collapsekit.progress import Message, ProgressEvent, TaskAdvanced, TaskFinished, TaskStarted
from collapsekit.serialization import to_jsonable

if TYPE_CHECKING:
    from collapsekit.data import LoadOptions

__all__ = [
    "model_options",
    "console",
    "err_console",
    "handle_errors",
    "load_options",
    "rich_progress",
    "print_json",
    "to_jsonable",
]


def _console(stderr: bool = False) -> Console:
    # Piped output (logs, CI, notebooks' !cells) gets 120 columns instead of rich's 80, so tables
    # and progress bars are not squeezed; a terminal or $COLUMNS decides otherwise.
    stream = sys.stderr if stderr else sys.stdout
    if not stream.isatty() and "COLUMNS" not in os.environ:
        return Console(stderr=stderr, width=120)
    return Console(stderr=stderr)


console = _console()
err_console = _console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

#: File-system errors a user fixes (exit 2, one line) rather than bugs (a traceback).
_USER_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENAMETOOLONG,
}


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, str(default)))
    except ValueError:
        return default


def load_options(cache_dir: Path | None = None, workers: int | None = None) -> LoadOptions:
    """How this command loads volumes: ``--cache-dir`` and ``--preprocess-workers``, plus the
    environment, read here once and passed down explicitly: torchrun's ``RANK``, ``WORLD_SIZE``
    and ``LOCAL_WORLD_SIZE``, and ``COLLAPSEKIT_CACHE_DIRECT`` (``0``, ``false``, ``no`` or
    ``off``: no ``O_DIRECT`` cache writes, e.g. on a network file system where each one is a
    synchronous round trip)."""
    from collapsekit.data import LoadOptions

    world = max(1, _env_int("WORLD_SIZE", 1))
    rank = _env_int("RANK", 0)
    direct = os.environ.get("COLLAPSEKIT_CACHE_DIRECT", "1").strip().lower()
    return LoadOptions(
        cache_dir=cache_dir,
        workers=workers,
        direct_io=direct not in ("0", "false", "no", "off"),
        rank=rank if 0 <= rank < world else 0,
        world_size=world,
        local_world_size=max(1, _env_int("LOCAL_WORLD_SIZE", 1)),
    )


def handle_errors(fn: F) -> F:
    """Translate :class:`CollapsekitError` into one red line on stderr and exit code 2 (or the
    error's own ``exit_code``: 130/143 for training stopped by SIGINT/SIGTERM).

    While the command runs, SIGTERM raises :class:`~collapsekit.errors.Terminated` (Python's
    default would end the process without a word): one line, exit 143."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
        try:
            return fn(*args, **kwargs)
        except Terminated:  # SLURM preemption, kill: one line, as a shell reports it (128 + 15)
            err_console.print("[bold red]stopped by SIGTERM[/]")
            raise typer.Exit(code=143) from None
        except CollapsekitError as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            # escape: messages name TOML tables like [model], which rich would eat as markup
            err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=getattr(e, "exit_code", 2)) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(code=130) from None
        except (OSError, RuntimeError) as e:
            # The safety net under the commands' own checks: a file system that refuses a read
            # or write (full, read-only, permissions, quota) is the user's to fix, not a bug.
            err = os_error_in(e)
            if err is None or err.errno not in _USER_ERRNOS:
                raise
            where = f"{err.filename}: " if err.filename else ""
            reason = err.strerror or os.strerror(err.errno)
            err_console.print(
                f"[bold red]error:[/] {escape(where + reason)}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(code=2) from None
        finally:
            if main:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    return wrapper  # type: ignore[return-value]


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


@contextmanager
def rich_progress(quiet: bool = False) -> Iterator[Callable[[ProgressEvent], None]]:
    """A progress callback that renders library events as rich progress bars on stderr."""
    if quiet:

        def noop(event: ProgressEvent) -> None:
            if isinstance(event, Message) and event.level == "warning":
                err_console.print(f"[yellow]warning:[/] {event.text}", highlight=False)

        yield noop
        return
    if not err_console.is_terminal:
        yield _plain_progress(_progress_interval())
        return
    progress = Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err_console,
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def callback(event: ProgressEvent) -> None:
        if isinstance(event, TaskStarted):
            tasks[event.task] = progress.add_task(
                event.description or event.task, total=event.total, info=""
            )
        elif isinstance(event, TaskAdvanced) and event.task in tasks:
            info = "  ".join(f"{k}={_fmt(v)}" for k, v in event.info.items())
            progress.update(tasks[event.task], advance=event.advance, info=info)
        elif isinstance(event, TaskFinished) and event.task in tasks:
            t = tasks.pop(event.task)
            task = progress.tasks[t] if t < len(progress.tasks) else None
            if task is not None and task.total is not None:
                progress.update(t, completed=task.total)
        elif isinstance(event, Message):
            style = "yellow" if event.level == "warning" else "dim"
            prefix = "warning: " if event.level == "warning" else ""
            progress.console.print(f"[{style}]{prefix}{event.text}[/]", highlight=False)

    with progress:
        yield callback


#: Seconds between plain progress lines when stderr is not a terminal (nohup, CI, SLURM logs).
PROGRESS_SECONDS = 30.0


def _progress_interval() -> float:
    try:
        return float(os.environ.get("COLLAPSEKIT_PROGRESS_SECONDS", PROGRESS_SECONDS))
    except ValueError:
        return PROGRESS_SECONDS


def _plain_progress(every_s: float) -> Callable[[ProgressEvent], None]:
    """Progress as plain lines on stderr, at most one per task every ``every_s`` seconds and one
    when the task ends: ``train 120/400 (30%) loss=6.12 img/s=41.3 backbone effective rank
    (λ)=35.2 elapsed 0:02:51 eta 0:06:39``. For logs, where a progress bar prints nothing until the end."""
    started: dict[str, tuple[str, int | None, float]] = {}
    done: dict[str, int] = {}
    last: dict[str, float] = {}
    latest: dict[str, dict[str, Any]] = {}

    def line(task: str, info: dict[str, Any]) -> str:
        description, total, t0 = started[task]
        elapsed = time.monotonic() - t0
        n = done[task]
        parts = [description, f"{n}/{total} ({100 * n / total:.0f}%)" if total else str(n)]
        parts += [f"{k}={_fmt(v)}" for k, v in info.items()]
        parts.append(f"elapsed {timedelta(seconds=round(elapsed))}")
        if total and n:
            parts.append(f"eta {timedelta(seconds=round(elapsed * (total - n) / n))}")
        return "  ".join(parts)

    def callback(event: ProgressEvent) -> None:
        if isinstance(event, TaskStarted):
            started[event.task] = (event.description or event.task, event.total, time.monotonic())
            done[event.task], last[event.task] = 0, time.monotonic()
        elif isinstance(event, TaskAdvanced) and event.task in started:
            done[event.task] += event.advance
            latest[event.task] = event.info
            if time.monotonic() - last[event.task] >= every_s:
                last[event.task] = time.monotonic()
                err_console.print(line(event.task, event.info), highlight=False, soft_wrap=True)
        elif isinstance(event, TaskFinished) and event.task in started:
            err_console.print(line(event.task, latest.pop(event.task, {})), highlight=False)
            started.pop(event.task)
        elif isinstance(event, Message):
            prefix = "warning: " if event.level == "warning" else ""
            err_console.print(
                f"{prefix}{event.text}", highlight=False, soft_wrap=True, markup=False
            )

    return callback


def print_json(obj: Any) -> None:
    """Print ``obj`` as JSON to stdout and nothing else."""
    typer.echo(json.dumps(to_jsonable(obj), indent=2))


def model_options(
    arch: str | None = None,
    state_dict_key: str | None = None,
    strip_prefix: str | None = None,
    stem_stride: int | None = None,
    model_kwargs: str | None = None,
) -> Any:
    """The :class:`~collapsekit.runs.models.ModelOptions` of the options above.

    Raises:
        ConfigError: ``--model-kwargs`` is not a JSON object, or an invalid value.
    """
    from collapsekit.errors import ConfigError
    from collapsekit.runs.models import ModelOptions

    kwargs: dict[str, Any] = {}
    if model_kwargs:
        try:
            kwargs = json.loads(model_kwargs)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"--model-kwargs is not valid JSON ({e.msg}): {model_kwargs}"
            ) from None
        if not isinstance(kwargs, dict):
            raise ConfigError(f"--model-kwargs must be a JSON object, got {model_kwargs}")
    return ModelOptions(
        arch=arch,
        key=state_dict_key,
        strip_prefix=strip_prefix,
        stem_stride=stem_stride,
        model_kwargs=kwargs,
    )
