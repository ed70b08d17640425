"""Connection URLs with every part percent-encoded, so any password round-trips through libpq."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, urlencode


def postgres_url(
    user: str,
    password: str,
    host: str,
    port: int,
    dbname: str,
    params: Mapping[str, str | int] | None = None,
) -> str:
    """``postgresql://user:password@host:port/dbname?params``; ``host`` may be a socket dir."""
    if host.startswith("/"):
        netloc_host = quote(host, safe="")  # libpq reads a percent-encoded path as a socket dir
    else:
        netloc_host = f"[{host}]" if ":" in host else host
    url = (
        f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}"
        f"@{netloc_host}:{port}/{quote(dbname, safe='')}"
    )
    if params:
        url += "?" + urlencode(params, quote_via=quote, safe="")
    return url


def prisma_engine_params(
    connection_limit: int, pool_timeout: int, prepared_statements: bool
) -> dict[str, str | int]:
    """Query parameters Prisma's query engine (Prisma <= 6, no driver adapter) reads from the URL.

    ``pgbouncer=true`` (Prisma's prepared statements off) only when PgBouncer cannot track them:
    Prisma's documentation says to leave it out from PgBouncer 1.21 with prepared statements on.
    libpq rejects all of these as unknown URI parameters, so they never go on ``DATABASE_URL``.
    """
    params: dict[str, str | int] = {} if prepared_statements else {"pgbouncer": "true"}
    return params | {"connection_limit": connection_limit, "pool_timeout": pool_timeout}


_PASSWORD_IN_URL = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@")


def mask(text: str) -> str:
    """Replace every password inside connection URLs in ``text`` with ``***``."""
    return _PASSWORD_IN_URL.sub(r"\1***@", text)
