"""The web UI's error edge: any exception in a handler becomes a one-line Chinese-first
``gr.Error`` toast (``中文 / English``).

``app.errors`` kinds carry their own Chinese line; other ``configs.errors`` kinds get one by
kind (bad input, not found, unavailable); anything else is a bug: "内部错误" on the page, the
traceback in the server log only. Gradio would otherwise show a bare "Error".
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from app.errors import Bilingual, UserError, bilingual_text, one_line
from app.web.render import user_message
from configs.errors import BadInput, GlmkbError, NotFound, Unavailable

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


__all__ = ["UserError", "to_gr_error", "user_errors", "warn"]

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
    zh, en = bilingual_text(error)
    if zh is None:
        zh = next((text for kind, text in KIND_ZH if isinstance(error, kind)), None)
    if zh is None:
        zh = "内部错误，详情见服务器日志"
        en = f"{type(error).__name__}: {en} (see the server log)"
    return _toast(user_message(zh, en))


def warn(zh: str, en: str) -> None:
    """Show a one-line Chinese + English warning toast (the handler carries on)."""
    gr.Warning(html.escape(user_message(zh, en)), title="注意 / Warning")


def _toast(message: str) -> gr.Error:
    # gr.Error renders its message as HTML; ours is plain text (it may quote a file name).
    return gr.Error(html.escape(message), title="错误 / Error", print_exception=False)


def user_errors(fn: F) -> F:
    """Decorate a handler (plain function or generator) so failures become ``gr.Error`` toasts.

    ``GeneratorExit`` (Stop pressed, page closed) is not an ``Exception`` and passes through,
    so closing the wrapper closes the wrapped generator and whatever stream it holds.
    """
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return (yield from fn(*args, **kwargs))
            except Exception as e:
                _log(fn, e)
                raise to_gr_error(e) from None

        return gen_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            _log(fn, e)
            raise to_gr_error(e) from None

    return wrapper  # type: ignore[return-value]


def _log(fn: Callable[..., Any], error: Exception) -> None:
    if isinstance(error, (gr.Error, Bilingual)):
        log.info("%s: %s", fn.__qualname__, error)
    elif isinstance(error, (GlmkbError, ValueError, OSError)):  # bad input or missing file: no traceback
        log.warning("%s: %s", fn.__qualname__, one_line(error))
    else:
        log.exception("%s failed", fn.__qualname__)


