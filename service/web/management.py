"""The model repository's rules, for every door (``api/repository.py`` over HTTP, ``service/grpc`` over
gRPC): who may call it (the management token), which names a load or unload may give, and in which model
control mode. Pure functions over plain values: they raise the typed errors each door maps to its status."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from pathlib import Path

from service.config import ServiceConfig
from service.errors import Conflict, Forbidden, InvalidInput, ModelNotFound, Unauthorized

# An artifact's name (the manifest's rule): no separator, no "..", nothing but a folder's name.
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Loading verifies and warms up every version the policy selects: it may take far longer than inference.
LOAD_SECONDS = 120.0


def authorize(token: str, authorization: str) -> None:
    """The caller's ``Authorization`` value must be ``Bearer <token>`` (the repository API is off without a
    token): 403 when off or wrong, 401 when missing."""
    if not token:
        raise Forbidden("the model repository API is off: the operator turns it on by setting "
                        "TRAINSERVE_MANAGEMENT_TOKEN")
    check_bearer(token, authorization, "the model repository API")


def check_bearer(token: str, authorization: str, what: str) -> None:
    """``authorization`` must be ``Bearer <token>``: 401 when missing, 403 when wrong."""
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized(f"{what} needs an Authorization: Bearer <token> header")
    # Digests of equal length, compared in constant time: neither the token nor its length leaks.
    if not hmac.compare_digest(_digest(given.strip()), _digest(token)):
        raise Forbidden("the bearer token is not the one this service accepts")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def check_load_parameters(names: Iterable[str]) -> None:
    """A load takes no configuration override and no files (Triton's ``config`` and ``file:`` keys)."""
    if any(k == "config" or k.startswith("file:") for k in names):
        raise InvalidInput("a load takes no config override or files: the artifact's manifest is its config")


def model_folder(config: ServiceConfig, name: str) -> Path:
    """The folder of the model ``name`` directly under the model directory (ModelNotFound otherwise)."""
    folder = config.model_dir / name
    if not _NAME.match(name) or folder.is_symlink() or not folder.is_dir():
        raise ModelNotFound(f"model {name[:100]!r} is not in the model repository")
    return folder


def check_control(config: ServiceConfig, name: str) -> None:
    """``name`` is a model folder of the repository, and model control lets the API change what is served."""
    model_folder(config, name)
    if config.model_control != "explicit":
        raise Conflict(f"model control is {config.model_control!r}: set TRAINSERVE_MODEL_CONTROL=explicit to "
                       "load and unload through this API" +
                       (" (poll serves what the model folder holds, as the version policy says)"
                        if config.model_control == "poll" else ""))
