"""The web UI's error edge: any exception in a handler becomes a one-line Chinese-first
toast (``中文 / English``, titled 错误), and, where the tab has one, the same line in its status.

``app.errors`` kinds carry their own Chinese line; other ``configs.errors`` kinds get one by
kind (bad input, not found, unavailable); anything else is a bug: "内部错误" on the page, the
traceback in the server log only. Gradio would otherwise show a bare "Error".

No overlay: Gradio covers every output of a failed event with a red "Error" box that blocks
the control under it until its × is clicked. Events are wired with ``show_progress="hidden"``
(``QUIET``), and ``ui.CSS`` hides any error box left; the toast and the status line say what
went wrong while every output keeps its last good value.
"""

from __future__ import annotations

import contextlib
import functools
import html
import inspect
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr

from app.errors import Bilingual, UserError, bilingual_text, one_line
from app.web.render import hide_paths, user_message
from configs.errors import BadInput, GlmkbError, NotFound, Unavailable
from kb.errors import DocumentLoadError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


__all__ = [
    "ERROR_TITLE", "QUIET", "WARNING_TITLE", "UserError", "error_line", "named_load_errors", "to_gr_error",
    "user_errors", "warn",
]

ERROR_TITLE = "错误"
WARNING_TITLE = "注意"
# Event options for handlers that may fail: no per-component status box (it would cover the
# control after an error); progress, where there is any, is shown in the tab's status line.
QUIET: dict[str, Any] = {"show_progress": "hidden"}

# An English reason naming a command, a flag or an endpoint is not for the page.
CLI_OR_API_HINT = re.compile(r"`|(?<![\w-])--[a-z]|\b(?:GET|POST|DELETE) /")

# The Chinese line for errors that bring none, by kind (most specific first).
KIND_ZH: tuple[tuple[type[BaseException], str], ...] = (
    (NotFound, "未找到"),
    (BadInput, "输入有误"),
    (Unavailable, "暂时不可用"),
    (GlmkbError, "操作失败"),
    (ValueError, "操作失败"),
    (OSError, "操作失败"),
)


def to_gr_error(error: Exception) -> gr.Error:
    """The toast for ``error``: its own Chinese line, else one by its kind; bugs say so."""
    if isinstance(error, gr.Error):
        return error
    return _toast(error_line(error))


def error_line(error: Exception) -> str:
    """``中文原因 / English reason`` for ``error`` (plain text, one line)."""
    if isinstance(error, gr.Error):
        return str(error.message)
    zh, en = bilingual_text(error)
    if zh is None:
        zh = next((text for kind, text in KIND_ZH if isinstance(error, kind)), None)
    if zh is None:
        zh = "内部错误，请稍后重试或联系管理员"
        en = f"{type(error).__name__} (details in the server log)"
    return page_message(zh, en)


def page_message(zh: str, en: str) -> str:
    """``zh / en`` for the page: no server folders, and no English line naming a command, a
    flag or an endpoint (that one is for CLI and API users)."""
    if CLI_OR_API_HINT.search(en):
        return zh
    return user_message(zh, hide_paths(en))


def warn(zh: str, en: str) -> None:
    """Show a one-line Chinese + English warning toast (the handler carries on)."""
    gr.Warning(html.escape(page_message(zh, en)), title=WARNING_TITLE)


@contextlib.contextmanager
def named_load_errors(paths: Sequence[str | Path]) -> Iterator[None]:
    """Turn a file that passed the upload check but fails to read (a damaged PDF) into a Chinese
    message naming it; the loader's reason had only "输入有误" and Gradio's hashed upload folder."""
    try:
        yield
    except DocumentLoadError as e:
        reason = one_line(e)
        names = []
        for path in paths:
            if str(path) in reason:
                reason = reason.replace(str(path), Path(path).name)
                names.append(Path(path).name)
        what = "、".join(names) or "上传的文件"
        raise UserError(f"无法读取 {what}：文件可能已损坏，请重新保存或导出后再上传", reason) from e


def _toast(message: str) -> gr.Error:
    # gr.Error renders its message as HTML; ours is plain text (it may quote a file name).
    return gr.Error(html.escape(message), title=ERROR_TITLE, print_exception=False)


def user_errors(fn: F | None = None, *, status: int | None = None, outputs: int = 1) -> Any:
    """Decorate a handler (plain function or generator) so failures become toasts.

    With ``status`` (the index of the tab's status line among the handler's ``outputs``
    outputs) the handler becomes a generator that, on failure, first writes "⚠️ reason" into
    the status line (every other output keeps its value), then raises the toast, so API
    clients still get the error. ``GeneratorExit`` (Stop pressed, page closed) is not an
    ``Exception`` and passes through, so closing the wrapper closes the wrapped generator and
    whatever stream it holds.
    """
    if fn is None:
        return functools.partial(user_errors, status=status, outputs=outputs)

    def status_update(error: Exception) -> tuple[Any, ...] | Any:
        values = [gr.skip()] * outputs
        values[status] = f"⚠️ {html.escape(error_line(error))}"  # type: ignore[index]
        return tuple(values) if outputs > 1 else values[0]

    if inspect.isgeneratorfunction(fn) or status is not None:
        generator = inspect.isgeneratorfunction(fn)

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                if generator:
                    return (yield from fn(*args, **kwargs))
                yield fn(*args, **kwargs)
            except Exception as e:
                _log(fn, e)
                if status is not None:
                    yield status_update(e)
                raise to_gr_error(e) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            _log(fn, e)
            raise to_gr_error(e) from None

    return wrapper


def _log(fn: Callable[..., Any], error: Exception) -> None:
    if isinstance(error, (gr.Error, Bilingual)):
        log.info("%s: %s", fn.__qualname__, error)
    elif isinstance(error, (GlmkbError, ValueError, OSError)):  # bad input or missing file: no traceback
        log.warning("%s: %s", fn.__qualname__, one_line(error))
    else:
        log.exception("%s failed", fn.__qualname__)


