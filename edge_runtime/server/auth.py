"""API keys: where they come from and how a request's key is checked."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from edge_runtime.errors import InvalidArgumentError

KEY_ENV = "EDGE_RUNTIME_API_KEY"


def resolve_api_key(key: str | None = None, key_file: str | os.PathLike[str] | None = None) -> str | None:
    """The key from the command line, else the first line of `key_file`, else $EDGE_RUNTIME_API_KEY.

    A file or the environment keep the key out of `ps` listings.
    """
    if key is not None and key_file is not None:
        raise InvalidArgumentError("give either --api-key or --api-key-file, not both")
    if key_file is not None:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"cannot read the API key file {key_file} ({exc}); check the path") from None
        key = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not key:
            raise InvalidArgumentError(f"the API key file {key_file} is empty; write the key on its first line")
    if key is None:
        key = os.environ.get(KEY_ENV) or None
    if key is not None and (not key.isprintable() or " " in key):
        raise InvalidArgumentError("an API key must be printable text without spaces")
    return key


def authorized(expected: str | None, header: str | None) -> bool:
    """Whether an `Authorization` header carries the key (constant time); any header passes without a key."""
    if not expected:
        return True
    return hmac.compare_digest((header or "").encode(), f"Bearer {expected}".encode())
