"""Who may reach the servers: the bind-address policy, the web login and the API key.

Checked before anything is loaded or bound, by every front end (``glmkb-web``, ``glmkb-api``,
``glmkb serve``); no gradio or FastAPI here.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping

from configs import UISettings
from configs.errors import BadInput
from configs.settings import APISettings

__all__ = ["AuthConfigError", "is_loopback", "resolve_api_key", "resolve_auth"]

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class AuthConfigError(BadInput):
    """The bind address and auth settings together are unsafe or incomplete (exit 2)."""


def is_loopback(host: str) -> bool:
    """True only for addresses that cannot be reached from another machine."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # any other host name may resolve to a public interface


def resolve_auth(ui: UISettings) -> tuple[str, str] | None:
    """The ``(user, password)`` pair for Gradio's login page, or None for no login.

    Refuses (AuthConfigError) a half-configured login, and a non-loopback bind address without
    a login unless ``ui.allow_no_auth`` says the exposure is intended.
    """
    user = ui.auth_user
    password = ui.auth_password.get_secret_value() if ui.auth_password is not None else None
    if bool(user) != bool(password):
        missing = "ui.auth_password (GLMKB_UI__AUTH_PASSWORD)" if user else "ui.auth_user (--auth-user)"
        raise AuthConfigError(f"basic auth is half configured: set {missing} too, or neither")
    if user and password:
        return (user, password)
    if not is_loopback(ui.host) and not ui.allow_no_auth:
        raise AuthConfigError(
            f"refusing to serve on {ui.host} without a login: set ui.auth_user (--auth-user) and "
            "ui.auth_password (GLMKB_UI__AUTH_PASSWORD), or ui.allow_no_auth: true "
            "(--allow-no-auth) if anyone on the network may use it, or bind 127.0.0.1"
        )
    return None


def resolve_api_key(api: APISettings, environ: Mapping[str, str] | None = None) -> str | None:
    """The key clients must send (from ``$api.api_key_env``, surrounding whitespace stripped),
    or None for no auth.

    Refuses (``AuthConfigError``) a non-loopback bind address without a key unless
    ``api.allow_no_auth`` says the exposure is intended. A key with surrounding whitespace
    (a pasted newline) is stripped with a warning: no client could send it in a header.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get(api.api_key_env) or ""
    key = raw.strip() or None
    if key is not None and key != raw:
        log.warning("$%s has surrounding whitespace; it was stripped (clients send the key without it)",
                    api.api_key_env)
    if key is None and not is_loopback(api.host) and not api.allow_no_auth:
        raise AuthConfigError(
            f"refusing to serve on {api.host} without an API key: set the environment variable "
            f"{api.api_key_env} (api.api_key_env) to a secret that clients send as 'Authorization: "
            "Bearer KEY', or set api.allow_no_auth: true (--allow-no-auth) if anyone on the network "
            "may use it, or bind 127.0.0.1"
        )
    return key
