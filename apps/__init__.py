"""Sample serverless apps behind PgBouncer: the request routing both styles share.

The styles differ only in where a request's connection comes from
(:mod:`apps.lambda_style`: one kept while warm; :mod:`apps.workers_style`: one per request).
Each gives :func:`route` a ``transaction`` callable that runs a unit of work as one
transaction on its connection.

Events are ``{"method": str, "path": str, "body": str | dict | None}``; responses are
``{"status": int, "body": dict}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import psycopg

from apps import db

T = TypeVar("T")
Work = Callable[[psycopg.Connection[Any]], T]
Transaction = Callable[[Work[Any]], Any]
Response = dict[str, Any]

MAX_NAME_LENGTH = 200

log = logging.getLogger("apps")


class Unavailable(Exception):
    """The app cannot serve the request right now (e.g. no free connection slot)."""


def route(event: Mapping[str, Any], transaction: Transaction) -> Response:
    """Serve one event; database failures become 503/500 with a short, secret-free error."""
    method = str(event.get("method", "GET")).upper()
    path = str(event.get("path", "/"))
    routes: dict[str, dict[str, Callable[[], Response]]] = {
        "/healthz": {"GET": lambda: _healthz(transaction)},
        "/items": {
            "GET": lambda: _list_items(transaction),
            "POST": lambda: _create_item(event.get("body"), transaction),
        },
    }
    if path not in routes:
        return _error(404, "not found")
    action = routes[path].get(method)
    if action is None:
        return _error(405, f"use {' or '.join(sorted(routes[path]))}")
    try:
        return action()
    except (psycopg.OperationalError, psycopg.InterfaceError, Unavailable) as exc:
        log.warning("%s %s: %s", method, path, db.describe_error(exc))
        return _error(503, "database unavailable")
    except psycopg.Error as exc:
        log.error("%s %s: %s", method, path, db.describe_error(exc))
        return _error(500, "database error")


def _healthz(transaction: Transaction) -> Response:
    return {"status": 200, "body": {"ok": True, "db": transaction(db.select_one)}}


def _list_items(transaction: Transaction) -> Response:
    rows = transaction(db.list_items)
    return {"status": 200, "body": {"items": [_item_json(row) for row in rows]}}


def _create_item(body: Any, transaction: Transaction) -> Response:
    if isinstance(body, str | bytes):
        try:
            body = json.loads(body)
        except ValueError:
            return _error(400, "body must be JSON")
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name.strip():
        return _error(400, 'body must be {"name": "<non-empty string>"}')
    if len(name) > MAX_NAME_LENGTH or "\x00" in name:
        return _error(400, f"name must be at most {MAX_NAME_LENGTH} characters, without NUL")
    row = transaction(lambda conn: db.insert_item(conn, name))
    return {"status": 201, "body": {"item": _item_json(row)}}


def _item_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "created_at": row["created_at"].isoformat()}


def _error(status: int, message: str) -> Response:
    return {"status": status, "body": {"error": message}}
