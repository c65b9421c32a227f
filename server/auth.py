"""Bearer-token authentication and roles for the gRPC server (`speechadapt serve --auth-tokens FILE`).

The token file holds one token per line:

    # TOKEN                                      ROLES              NAME (optional)
    3q2-7hJk0cYtq1vWmLx0pS9eZb4RtUaN5fGhIjKlMnO  recognize          asr-frontend
    Zx81kLm-0pQrStUvWx2yZaBcDeFgHiJkLmNoPqRsTu  recognize,adapt    alice
    h4Nn2VbX9cZ8aQwErTyUiOpAsDfGhJkLzXcVbNm123  admin              ops

Roles: `recognize` (Recognizer: StreamingRecognize, Recognize), `adapt` (Adaptation: jobs, uploads, reports;
an `adapt` caller sees and cancels only the jobs it submitted), `admin` (every role, and every job). Models
(ListModels, GetModel) takes `recognize` or `adapt`: both need to name models. Health and reflection stay
open. A line without a name is named `key-<first 8 hex digits of the token's sha256>`; several tokens may
share one name (rotation: both work, and both own that name's jobs). Blank lines and `#` comments are
skipped. Tokens: at least 16 printable ASCII characters.

Clients send `authorization: Bearer <token>` metadata. No or an unknown token: UNAUTHENTICATED; a known token
without the role the method needs: PERMISSION_DENIED. Tokens are kept only as sha256 digests, compared in
constant time against every entry (`hmac.compare_digest`), and never logged or echoed in a message.
`Authenticator.reload()` (SIGHUP in `speechadapt serve`) re-reads the file; a bad file keeps the old table.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from speechadapt.server.handlers import inside, refusal
from speechadapt.v1 import adaptation_pb2, models_pb2, recognizer_pb2

log = logging.getLogger(__name__)

RECOGNIZE, ADAPT, ADMIN = "recognize", "adapt", "admin"
ROLES = (RECOGNIZE, ADAPT, ADMIN)
MIN_TOKEN_CHARS = 16
CLIENT_HINT = "speechadapt --token / SPEECHADAPT_TOKEN"
FORMAT_HINT = "write one 'TOKEN ROLE[,ROLE] [NAME]' per line, roles recognize, adapt, admin"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII: what gRPC metadata can carry


def _methods(module, service: str) -> list[str]:
    desc = module.DESCRIPTOR.services_by_name[service]
    return [f"/{desc.full_name}/{m.name}" for m in desc.methods]


# The roles that may call each method (admin may call all). Derived from the service descriptors, so a new
# method of a service is covered with its service's roles.
METHOD_ROLES: dict[str, frozenset[str]] = {
    **{m: frozenset({RECOGNIZE}) for m in _methods(recognizer_pb2, "Recognizer")},
    **{m: frozenset({RECOGNIZE, ADAPT}) for m in _methods(models_pb2, "Models")},
    **{m: frozenset({ADAPT}) for m in _methods(adaptation_pb2, "Adaptation")},
}
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the file and line (never a token)."""


@dataclass(frozen=True)
class Caller:
    """Who made a call: the token's name and roles."""

    name: str
    roles: frozenset[str]

    @property
    def admin(self) -> bool:
        return ADMIN in self.roles

    def may(self, roles: Iterable[str]) -> bool:
        """Whether this caller holds one of `roles` (admin holds every role)."""
        return self.admin or not self.roles.isdisjoint(roles)

    def sees(self, owner: str) -> bool:
        """Whether this caller may see a job of `owner` (its own; admin: all)."""
        return self.admin or owner == self.name


# The caller of the RPC being handled, set by AuthInterceptor for the handler's task; None on an open server.
CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("speechadapt_caller", default=None)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    caller: Caller
    line: int


def _role_problem(field: str) -> str | None:
    for role in field.split(","):
        if role not in ROLES:
            # a short lowercase word is a misspelt role; anything else may be a token in the wrong place
            shown = f"unknown role {role!r}" if re.fullmatch(r"[a-z_-]{1,20}", role) else "the second field is not a role list"
            return f"{shown}: roles are recognize, adapt, admin (comma-separated, no spaces)"
    return None


def parse_tokens(text: str, source: str = "token file") -> list[_Entry]:
    """The entries of a token file's text; TokenFileError naming the first bad line (never its token)."""
    entries: list[_Entry] = []
    first_line: dict[bytes, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        for i, f in enumerate(fields):  # a field starting with '#' starts a comment
            if f.startswith("#"):
                fields = fields[:i]
                break
        if not fields:
            continue
        where = f"{source} line {n}"
        if len(fields) < 2:
            raise TokenFileError(f"{where}: no roles after the token: {FORMAT_HINT}")
        if len(fields) > 3:
            raise TokenFileError(f"{where}: {len(fields)} fields; {FORMAT_HINT} (no spaces inside a field)")
        token, roles = fields[0], fields[1]
        problem = _role_problem(roles)
        if problem:
            raise TokenFileError(f"{where}: {problem}")
        if not _TOKEN.fullmatch(token):
            raise TokenFileError(f"{where}: the token has characters other than printable ASCII")
        if len(token) < MIN_TOKEN_CHARS:
            raise TokenFileError(f"{where}: the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                                 "random ones, e.g. from: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        digest = _digest(token)
        if len(fields) == 3:
            name = fields[2]
            if not _NAME.fullmatch(name):
                raise TokenFileError(f"{where}: the name must be 1-64 letters, digits, '.', '_', '@' or '-', "
                                     "starting with a letter or digit")
        else:
            name = f"key-{digest.hex()[:8]}"
        if digest in first_line:
            raise TokenFileError(f"{where}: the same token as line {first_line[digest]}; list each token once "
                                 "(several tokens may share a name)")
        first_line[digest] = n
        entries.append(_Entry(digest, Caller(name, frozenset(roles.split(","))), n))
    if not entries:
        raise TokenFileError(f"{source} has no tokens: {FORMAT_HINT}")
    return entries


class TokenTable:
    """Token digests -> callers; `lookup` compares against every entry in constant time."""

    def __init__(self, entries: list[_Entry]):
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> list[str]:
        return sorted({e.caller.name for e in self._entries})

    def lookup(self, token: str) -> Caller | None:
        presented = _digest(token)
        found = None
        for entry in self._entries:  # no early exit: the time does not depend on which entry matches
            match = hmac.compare_digest(presented, entry.digest)
            found = entry.caller if match and found is None else found
        return found


def load_tokens(path: str | Path) -> TokenTable:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TokenFileError(f"token file {path} is not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise TokenFileError(f"cannot read the token file {path}: {e.strerror or e}") from None
    return TokenTable(parse_tokens(text, f"token file {path}"))


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Authenticator:
    """The token table of a file, reloadable, and the check of one call's metadata."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.table = load_tokens(self.path)
        self._check_mode()

    def _check_mode(self) -> None:
        with contextlib.suppress(OSError):
            if self.path.stat().st_mode & 0o077:
                log.warning("token file %s can be read by other users: chmod 600 it", self.path)

    def reload(self) -> bool:
        """Re-read the file; on any problem keep the current table and log why. True when reloaded."""
        try:
            table = load_tokens(self.path)
        except TokenFileError as e:
            log.error("keeping the previous %d tokens: %s", len(self.table), e)
            return False
        self.table = table
        self._check_mode()
        log.info("reloaded %s: %d tokens (%s)", self.path, len(table), ", ".join(table.names))
        return True

    def authenticate(self, metadata) -> Caller:
        """The caller whose token `metadata` carries, else AuthError UNAUTHENTICATED saying what to send."""
        values = [v for k, v in (metadata or ()) if k.lower() == "authorization"]
        if not values:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token: send metadata "
                            f"'authorization: Bearer <token>' ({CLIENT_HINT})")
        if len(values) > 1:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "more than one 'authorization' metadata entry: send one, "
                            "'authorization: Bearer <token>'")
        value = values[0].decode("ascii", "replace") if isinstance(values[0], bytes) else str(values[0])
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "the 'authorization' metadata must be 'Bearer <token>' "
                            f"({CLIENT_HINT})")
        caller = self.table.lookup(token)
        if caller is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid on this server (unknown "
                            f"or revoked): check it ({CLIENT_HINT}) or ask the server's admin for one")
        return caller

    def authorize(self, method: str, metadata) -> Caller | None:
        """The caller of `method` (None for the open health and reflection services), or AuthError."""
        if method.startswith(OPEN_PREFIXES):
            return None
        caller = self.authenticate(metadata)
        need = METHOD_ROLES.get(method)
        if need is not None and not caller.may(need):
            roles = " or ".join(f"'{r}'" for r in sorted(need))
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED,
                            f"{caller.name} may not call {method}: it needs the {roles} role (or 'admin'); the token "
                            f"has {', '.join(sorted(caller.roles))}. Use a token with that role (the server's "
                            "--auth-tokens file)")
        return caller


@contextlib.asynccontextmanager
async def _acting_as(caller: Caller):
    """The call runs with CALLER set to `caller` (left set afterwards: the access interceptor logs the name)."""
    CALLER.set(caller)
    yield


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid token or role (UNAUTHENTICATED / PERMISSION_DENIED) before the service
    sees them; lets health and reflection through; runs the rest with CALLER set."""

    def __init__(self, auth: Authenticator):
        self.auth = auth

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: UNIMPLEMENTED, as without auth
            return None
        try:
            caller = self.auth.authorize(handler_call_details.method, handler_call_details.invocation_metadata)
        except AuthError as e:
            return refusal(handler, e.code, e.message)
        return handler if caller is None else inside(handler, lambda _context: _acting_as(caller))


def is_loopback(host: str) -> bool:
    """Whether binding `host` only accepts connections from this machine."""
    import ipaddress

    h = host.strip().strip("[]")
    if h.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False
