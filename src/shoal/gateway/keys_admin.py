"""Key management over HTTP, guarded by the admin key from ``SHOAL_ADMIN_KEY``.

Mount on the gateway's aiohttp application with :func:`add_key_admin` (the CLI,
``shoal keys``, does the same on the store directly)::

    GET  /admin/keys                      active keys (``?all=1``: revoked too)
    POST /admin/keys                      {"name", "budget_usd", "period", "rpm", "tpm",
                                           "concurrency", "models": [..]} -> 201, with "key"
    GET  /admin/keys/{name_or_id}         one key and its spend (total, today, this month)
    PATCH /admin/keys/{name_or_id}        {"budget_usd": 80, "rpm": null, ...}: new limits
    POST /admin/keys/{name_or_id}/revoke
    POST /admin/keys/{name_or_id}/rotate  -> the new "key"

Every route needs ``Authorization: Bearer <admin key>`` (or ``x-api-key``); without
``SHOAL_ADMIN_KEY`` in the gateway's environment they answer 403 and nothing else.
Errors are ``{"error": {"message", "type", "code"}}``. The new secret appears only in
the answer to create and rotate. ``models`` is checked as ``shoal keys create --models``
checks it (:func:`check_allowed_models`): an unknown name, or a glob that matches no
model, is a 400 with close matches, not a key that gets 403 on every call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from shoal.errors import ConfigError
from shoal.gateway.key_store import KeyRecord, KeyStore
from shoal.gateway.keys import StoreKeys, admin_key, check_admin
from shoal.gateway.keys_api import KeyRejected

if TYPE_CHECKING:
    from shoal.config import Config

__all__ = ["add_key_admin", "check_allowed_models"]

Handler = Callable[[web.Request], Awaitable[web.Response]]
_FIELDS = {"name", "budget_usd", "period", "rpm", "tpm", "concurrency", "models"}


def _error(status: int, code: str, message: str) -> web.Response:
    kind = {401: "authentication_error", 403: "permission_error",
            404: "not_found_error"}.get(status, "invalid_request_error")
    return web.json_response({"error": {"message": message, "type": kind, "code": code}},
                             status=status)


def _presented(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


def _guarded(env: Mapping[str, str] | None, handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.Response:
        if admin_key(env) is None:
            return _error(403, "admin_disabled", "key management over HTTP is off: start the "
                          "gateway with SHOAL_ADMIN_KEY set, or use `shoal keys` on the store")
        try:
            check_admin(_presented(request), env)
        except KeyRejected as exc:
            return _error(401, "invalid_admin_key", str(exc))
        try:
            return await handler(request)
        except ConfigError as exc:
            return _error(400, "invalid_request", str(exc))

    return guarded


def _int_or_none(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer or null, got {value!r}")
    return value


def check_allowed_models(patterns: Sequence[str], config: Config, *,
                         option: str = "models") -> None:
    """Each of a key's allowed ``patterns`` must be a model of ``config`` (the catalog and
    shoal.toml; an alias counts) and each glob must match one: a key limited to a typo
    would get 403 on every call. A ``ConfigError`` naming ``option`` and the close matches
    otherwise. ``shoal keys create|update --models`` and ``POST|PATCH /admin/keys`` both
    check with this."""
    from fnmatch import fnmatchcase

    names = {*config.models, *(a for m in config.models.values() for a in m.aliases)}
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            if not any(fnmatchcase(n, pattern) for n in names):
                raise ConfigError(f"{option} {pattern!r} matches no model of the catalog or "
                                  "shoal.toml; `shoal models` lists them")
            continue
        try:
            config.model(pattern)
        except ConfigError as exc:
            raise ConfigError(f"{option}: {exc}") from None


def _create_args(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ConfigError("the body must be a JSON object such as "
                          '{"name": "team-a", "budget_usd": 50, "period": "month"}')
    unknown = set(body) - _FIELDS
    if unknown:
        raise ConfigError(f"unknown field(s) {sorted(unknown)}; use {sorted(_FIELDS)}")
    name, budget, models = body.get("name"), body.get("budget_usd"), body.get("models", [])
    if not isinstance(name, str):
        raise ConfigError("name is required: a string such as \"team-a\"")
    if budget is not None and (not isinstance(budget, int | float) or isinstance(budget, bool)):
        raise ConfigError(f"budget_usd must be a number or null, got {budget!r}")
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ConfigError("models must be a list of names or globs, e.g. [\"gpt-4o\", "
                          "\"deepseek-*\"]")
    return {"name": name, "budget_usd": None if budget is None else float(budget),
            "period": body.get("period", "total"), "rpm": _int_or_none(body, "rpm"),
            "tpm": _int_or_none(body, "tpm"),
            "max_concurrency": _int_or_none(body, "concurrency"), "models": models}


def add_key_admin(app: web.Application, keys: StoreKeys, *, prefix: str = "/admin/keys",
                  env: Mapping[str, str] | None = None, config: Config | None = None) -> None:
    """Add the routes above to ``app``; ``env`` (tests) replaces ``os.environ``. ``config``:
    the models a key's ``models`` may name (the gateway passes its Router's); None: the
    catalog and ``$SHOAL_CONFIG`` or ``./shoal.toml``, loaded when first needed."""
    loaded: list[Config] = [] if config is None else [config]

    async def store() -> KeyStore:
        await keys.open()
        return keys.store

    def check_models(models: list[str]) -> None:
        if not models:
            return
        if not loaded:
            from shoal.config import Config

            try:
                loaded.append(Config.load())
            except ConfigError as exc:
                raise ConfigError(f"models is checked against the gateway's config, which "
                                  f"does not load: {exc}") from None
        check_allowed_models(models, loaded[0])

    async def find(request: web.Request) -> KeyRecord | web.Response:
        ident = request.match_info["key"]
        record = await (await store()).find(ident)
        if record is None:
            return _error(404, "key_not_found", f"no virtual key named or with id {ident!r}")
        return record

    async def list_keys(request: web.Request) -> web.Response:
        every = request.query.get("all", "") in ("1", "true", "yes")
        records = await (await store()).list(include_revoked=every)
        return web.json_response({"keys": [r.as_dict() for r in records]})

    async def create(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            raise ConfigError("the body is not JSON") from None
        args = _create_args(body)
        check_models(args["models"])
        record, secret = await (await store()).create(args.pop("name"), **args)
        return web.json_response({**record.as_dict(), "key": secret}, status=201)

    async def show(request: web.Request) -> web.Response:
        record = await find(request)
        if isinstance(record, web.Response):
            return record
        spend = await (await store()).spend_now(record.id)
        return web.json_response({**record.as_dict(),
                                  "spend": {p: s.as_dict() for p, s in spend.items()}})

    async def update(request: web.Request) -> web.Response:
        record = await find(request)
        if isinstance(record, web.Response):
            return record
        try:
            body = await request.json()
        except ValueError:
            raise ConfigError("the body is not JSON") from None
        if not isinstance(body, dict) or "name" in body:
            raise ConfigError("the body must be a JSON object of the limits to change: "
                              "budget_usd, period, rpm, tpm, concurrency, models")
        args = _create_args({"name": record.name, **body})
        args.pop("name")
        changes = {k: v for k, v in args.items()
                   if ("concurrency" if k == "max_concurrency" else k) in body}
        if "models" in changes:
            check_models(changes["models"])
        updated = await (await store()).update(record.id, **changes)
        if updated is None:
            return _error(409, "key_revoked", f"the key {record.name!r} is revoked")
        keys.forget()
        return web.json_response(updated.as_dict())

    async def revoke(request: web.Request) -> web.Response:
        record = await find(request)
        if isinstance(record, web.Response):
            return record
        done = await (await store()).revoke(record.id)
        keys.forget()  # this replica refuses it at once; the others within cache_s
        return web.json_response({"id": record.id, "name": record.name, "revoked": done})

    async def rotate(request: web.Request) -> web.Response:
        record = await find(request)
        if isinstance(record, web.Response):
            return record
        s = await store()
        secret = await s.rotate(record.id)
        if secret is None:
            return _error(409, "key_revoked", f"the key {record.name!r} is revoked; create a "
                          "new one")
        keys.forget()
        fresh = await s.find(record.id)
        assert fresh is not None
        return web.json_response({**fresh.as_dict(), "key": secret})

    from shoal.gateway.app import enveloped  # errors in the caller's envelope

    app.router.add_get(prefix, enveloped(_guarded(env, list_keys)))
    app.router.add_post(prefix, enveloped(_guarded(env, create)))
    app.router.add_get(prefix + "/{key}", enveloped(_guarded(env, show)))
    app.router.add_patch(prefix + "/{key}", enveloped(_guarded(env, update)))
    app.router.add_post(prefix + "/{key}/revoke", enveloped(_guarded(env, revoke)))
    app.router.add_post(prefix + "/{key}/rotate", enveloped(_guarded(env, rotate)))
