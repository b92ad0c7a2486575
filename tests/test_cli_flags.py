"""The one flag table (configs.flags) and the error policy shared by every command line."""

from __future__ import annotations

import click
import pytest

from configs import Settings
from configs.cli import invoke_click, run_command
from configs.errors import BadInput, Unavailable
from configs.flags import FLAGS, settings_overrides
from ingest.cli import cli


def _field(key: str) -> object:
    node: object = Settings
    for part in key.split("."):
        fields = node.model_fields  # type: ignore[attr-defined]
        assert part in fields, f"flag key {key!r}: no setting {part!r}"
        node = fields[part].annotation
    return node


def test_every_flag_key_is_a_setting() -> None:
    for name, flag in FLAGS.items():
        if flag.key:
            _field(flag.key)


def test_one_meaning_per_flag() -> None:
    """Regression: ``--device`` meant the embedder in ``ingest build``/``query`` and the chat
    model in ``ingest summarize``. Every command now takes each spelling from the one table."""
    spellings: dict[str, str] = {}
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        for param in cli.get_command(ctx, name).params:
            for spelling in getattr(param, "opts", []):
                if not spelling.startswith("-"):
                    continue
                seen = spellings.setdefault(spelling, param.name)
                assert seen == param.name, f"{spelling} means {seen} and {param.name}"
    assert spellings["--device"] == "device" and FLAGS["device"].key == "llm.device"
    assert spellings["--embedding-device"] == "embedding_device"


def test_flags_become_nested_overrides_and_unset_flags_vanish() -> None:
    got = settings_overrides({"kb": "novels", "device": "cpu", "k": 3, "mode": None, "json": True})
    assert got == {"kb_name": "novels", "llm": {"device": "cpu"}, "retrieval": {"top_k": 3}}


@pytest.mark.parametrize(("error", "code"), [(BadInput("bad"), 2), (Unavailable("down"), 3), (FileNotFoundError("f"), 2)])
def test_user_errors_are_one_line_with_their_exit_code(error: Exception, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    def work() -> int:
        raise error

    assert run_command("x", work, verbose=False) == code
    err = capsys.readouterr().err
    assert err.startswith("x: error: ") and err.count("\n") == 1


def test_real_bugs_keep_their_traceback() -> None:
    """Regression: RuntimeError and ImportError were printed as one line, hiding real bugs."""
    def work() -> int:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        run_command("x", work, verbose=False)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert invoke_click(cli, ["build"], prog="ingest") == 2
    assert "Missing argument" in capsys.readouterr().err
    assert invoke_click(cli, ["--help"], prog="ingest") == 0
