"""Step 5 of a bundle: README.md inside it, saying how to install and run it and under which
licences its wheels and models come (read from each wheel's METADATA and each model card)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.bundle.wheels import WheelInfo


@dataclass(frozen=True)
class BundledModel:
    role: str  # chat model, embedding model, adapter
    folder: str  # relative to the bundle
    source: str  # folder or hub id it came from
    licence: str


def write_readme(
    bundle: Path,
    *,
    target: str,
    wheels: list[WheelInfo],
    models: list[BundledModel],
    kbs: dict[str, str],
    requirement: str,
) -> Path:
    """Write ``bundle/README.md``."""
    lines = [
        "# glmkb offline bundle",
        "",
        f"For {target}. Installs `{requirement}` and its dependencies from `wheels/` only.",
        "",
        "## Install and run (on the offline server)",
        "",
        "```sh",
        "./install.sh            # checks Python, platform, disk and SHA256SUMS, then makes .venv",
        "./run.sh --check        # GPU, model load and knowledge bases on one screen",
        "./run.sh                # web UI on 127.0.0.1:7860 (api: ./run.sh api, port 8000)",
        "GLMKB_UI__AUTH_USER=admin GLMKB_UI__AUTH_PASSWORD=... ./run.sh --host 0.0.0.0",
        "```",
        "",
        "Serving other machines needs `--host 0.0.0.0`, a login (web: GLMKB_UI__AUTH_USER and",
        "GLMKB_UI__AUTH_PASSWORD; API: GLMKB_API_KEY) and the port open in the firewall",
        "(`firewall-cmd --add-port=7860/tcp --permanent && firewall-cmd --reload` or `ufw allow 7860/tcp`).",
        "Settings: `config.yaml` (paths relative to this folder). Docker: `docker build -t glmkb .`",
        "(the Dockerfile copies this folder onto its base image and runs install.sh).",
        "Check the files again at any time: `sha256sum -c SHA256SUMS`.",
        "",
        "## Models",
        "",
    ]
    if models:
        lines += ["| role | folder | from | licence (model card) |", "|---|---|---|---|"]
        lines += [f"| {m.role} | `{m.folder}` | {m.source} | {m.licence} |" for m in models]
    else:
        lines.append("No chat or embedding model bundled (keyword search only; set llm.model_path to use one).")
    lines += ["", "## Knowledge bases", ""]
    if kbs:
        lines += [f"- `kb/{name}` at version `{version}`" for name, version in kbs.items()]
    else:
        lines.append("None bundled.")
    lines += [
        "",
        "## Wheels and their licences",
        "",
        "Read from each wheel's METADATA (License-Expression, License or its classifiers).",
        "",
        "| package | version | licence |",
        "|---|---|---|",
    ]
    lines += [f"| {w.name} | {w.version} | {_cell(w.licence)} |" for w in sorted(wheels, key=lambda w: w.name.lower())]
    path = bundle / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "/")
