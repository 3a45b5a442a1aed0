"""The device registry over REST, for operators' tools holding an OAuth2 token: `fleet:read` lists devices,
`fleet:write` registers one (its token is in the answer, the only time it is shown) or removes one."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from cloud_service.api.limits import MAX_DEVICE_ID_CHARS, check_device_id
from cloud_service.http.errors import ApiError
from cloud_service.jobs.store import DeviceExists, device_key, register_device
from cloud_service.oauth import tokens

if TYPE_CHECKING:
    from cloud_service.api.server import EscalationServicer
    from cloud_service.http.access import Access

MAX_LISTED = 10_000


class NewDevice(BaseModel):
    device_id: str = Field(max_length=MAX_DEVICE_ID_CHARS)
    rotate: bool = False


def _device_id(raw: str) -> str:
    try:
        return check_device_id(raw)
    except ValueError as exc:
        raise ApiError(400, str(exc), "invalid_field", "device_id") from None


def add_fleet_routes(app: FastAPI, servicer: EscalationServicer, access: Access) -> None:
    store = servicer.store

    async def ask(what: str, fn: Any) -> Any:
        try:
            return await store.ask(what, fn)
        except LookupError:
            raise ApiError(503, "the device registry (Redis) is unavailable; retry later", "unavailable") from None

    @app.get("/v1/fleet/devices")
    async def list_devices(authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        await access.authorize(authorization, tokens.SCOPE_FLEET_READ)

        async def scan(r: Any) -> list[str]:
            out: list[str] = []
            async for key in r.scan_iter(match=device_key("*"), count=500):
                out.append(key.decode().split(":", 2)[2])
                if len(out) >= MAX_LISTED:
                    break
            return sorted(out)

        ids = await ask("device list", scan)
        return {"object": "list", "data": [{"id": d, "object": "device"} for d in ids]}

    @app.post("/v1/fleet/devices")
    async def add_device(body: NewDevice, authorization: Annotated[str | None, Header()] = None) -> Response:
        await access.authorize(authorization, tokens.SCOPE_FLEET_WRITE)
        device = _device_id(body.device_id)
        if store.url is None:
            raise ApiError(503, "this server has no Redis: there is no device registry", "unavailable")
        token = await asyncio.get_running_loop().run_in_executor(None, _register, store.url, device, body.rotate)
        return JSONResponse({"id": device, "object": "device", "token": token}, 201,
                            headers={"Cache-Control": "no-store"})

    @app.delete("/v1/fleet/devices/{device_id}")
    async def remove_device(device_id: str, authorization: Annotated[str | None, Header()] = None) -> Response:
        await access.authorize(authorization, tokens.SCOPE_FLEET_WRITE)
        device = _device_id(device_id)
        if not await ask("device remove", lambda r: r.delete(device_key(device))):
            raise ApiError(404, f"device {device!r} is not registered", "not_found")
        return Response(status_code=204)



def _register(url: str, device: str, rotate: bool) -> str:
    """The one device registration (`register_device`), on a short-lived synchronous client."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3.0, socket_timeout=3.0)
    try:
        return register_device(client, device, rotate=rotate)
    except DeviceExists:
        raise ApiError(409, f"device {device!r} is registered already; send rotate=true for a new token",
                       "device_exists") from None
    except redis.RedisError:
        raise ApiError(503, "the device registry (Redis) is unavailable; retry later", "unavailable") from None
    finally:
        client.close()
