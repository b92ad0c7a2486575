"""Turn any exception in a UI handler into a one-line Chinese + English ``gr.Error`` toast.

Gradio would otherwise show a bare "Error" (or, with ``show_error``, the exception text and
nothing else); the traceback goes to the server log only, never to the page.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from app.render import user_message
from configs.cli import one_line

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class UserError(ValueError):
    """A problem the user can fix; ``zh`` and ``en`` are shown as they are."""

    def __init__(self, zh: str, en: str) -> None:
        super().__init__(en)
        self.zh = zh
        self.en = en


def to_gr_error(error: Exception) -> gr.Error:
    """The toast for ``error``: UserError text as is, anything else prefixed with its kind."""
    if isinstance(error, gr.Error):
        return error
    if isinstance(error, UserError):
        return _toast(user_message(error.zh, error.en))
    text = one_line(error)
    if isinstance(error, (ValueError, OSError)):
        zh = "操作失败"
    else:
        zh = "内部错误，详情见服务器日志"
        text = f"{type(error).__name__}: {text} (see the server log)"
    return _toast(user_message(zh, text))


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
    if isinstance(error, (gr.Error, UserError)):
        log.info("%s: %s", fn.__qualname__, error)
    elif isinstance(error, (ValueError, OSError)):  # bad input or missing file: no traceback
        log.warning("%s: %s", fn.__qualname__, one_line(error))
    else:
        log.exception("%s failed", fn.__qualname__)


