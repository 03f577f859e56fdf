"""A translate request's image bytes and dropout seed, whichever of the three forms it came in: multipart (a file
field "image", an optional field "seed"), JSON {"image": "<base64 image bytes>", "seed": n}, or the image itself as
the body (Content-Type image/* or application/octet-stream). ?seed= in the query serves every form; a field or key
named seed wins over it. Bodies arrive bounded in size and time (http.BodyLimits)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Annotated

from fastapi import HTTPException, Query, Request
from starlette.datastructures import UploadFile

from fastpix.infer.server.http import json_object

JSON_FORM = ': JSON requests must be {"image": "<base64 image bytes>"} (optional "seed")'


@dataclass(frozen=True)
class TranslateInput:
    data: bytes  # the image file's bytes, not decoded yet
    seed: int | None  # dropout noise asked for (None: the server picks one)


def parse_seed(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise HTTPException(400, f"seed must be an integer, got {str(value)[:40]!r}") from None


async def translate_input(request: Request, seed: Annotated[str | None, Query()] = None) -> TranslateInput:
    """The dependency that reads a translate request: 400 for a malformed one, 415 for an unknown Content-Type."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        # Starlette parses the form as it streams in (uploads over 1 MiB spill to temporary files, closed on leaving).
        async with request.form() as form:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, "multipart request without a file field named 'image'")
            return TranslateInput(await upload.read(), parse_seed(form.get("seed", seed)))
    if content_type == "application/json":
        payload = json_object(await request.body(), JSON_FORM)
        try:
            return TranslateInput(
                base64.b64decode(payload["image"], validate=True), parse_seed(payload.get("seed", seed))
            )
        except (KeyError, TypeError, ValueError) as exc:  # binascii.Error is a ValueError
            raise HTTPException(400, f"{type(exc).__name__}: {str(exc)[:200]}{JSON_FORM}") from None
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return TranslateInput(await request.body(), parse_seed(seed))
    raise HTTPException(
        415,
        f"Content-Type {content_type or '(none)'!r}: send multipart/form-data with a file field "
        "'image', application/json {\"image\": base64}, or the image itself as image/*",
    )
