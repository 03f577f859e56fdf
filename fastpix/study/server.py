"""`fastpix study serve`: the study page over HTTP (FastAPI + uvicorn, as fastpix serve), answers to a file.

    GET  /               the page (index.html); ?observer=ID names the observer, ?model=NAME fixes the model
    GET  /images/...     the study's images
    POST /api/answers    one whole session (answers.py); 200 {"saved": true} once it is on disk (fsync'ed)
    GET  /healthz        200 {"status": "ok", "sessions": n saved by this process}

Errors answer JSON {"error": "..."}, and a session is acknowledged only once it is on disk: a body that is not a JSON
object or not a session of this study 400, over max_bytes 413, not whole within body_timeout_s 408, no space left
for the answers file 507, any other failure 500 (its traceback in the log). The connection limits are fastpix
serve's (fastpix/infer/server/http.py). Shutdown (SIGTERM / Ctrl-C) stops accepting connections and finishes the
submissions already received.
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State

from fastpix.errors import DiskFull
from fastpix.infer.server.http import (
    BodyLimits,
    add_error_handler,
    add_error_handlers,
    error_response,
    json_object,
    run,
)
from fastpix.study.answers import AnswersFile, SessionError, check_session
from fastpix.study.page import ANSWERS_FILE, PAGE_FILE, load_study

__all__ = ["create_app", "run"]

router = APIRouter()


def app_state(request: Request) -> State:
    return request.app.state


AppState = Annotated[State, Depends(app_state)]


@router.get("/")
async def page(state: AppState):
    return FileResponse(os.path.join(state.folder, PAGE_FILE), headers={"Cache-Control": "no-store"})


@router.post("/api/answers")
async def submit(request: Request, state: AppState):
    session = check_session(json_object(await request.body()), state.study)
    await run_in_threadpool(state.answers.append, session)
    state.saved += 1
    return {"saved": True, "trials": len(session["trials"])}


@router.get("/healthz")
async def healthz(state: AppState):
    return {"status": "ok", "sessions": state.saved}


async def not_a_session(request, exc: SessionError):
    return error_response(400, f"not a session of this study: {exc}")


async def no_space(request, exc: DiskFull):
    return error_response(507, str(exc))


def create_app(folder: str, cfg=None) -> FastAPI:
    """The study app for the study folder `folder` (written by `fastpix study make`), with a StudyServeConfig."""
    from fastpix.config import StudyServeConfig

    cfg = cfg or StudyServeConfig()
    app = FastAPI(title="fastpix study", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.folder, app.state.config, app.state.study = folder, cfg, load_study(folder)
    app.state.answers, app.state.saved = AnswersFile(cfg.answers or os.path.join(folder, ANSWERS_FILE)), 0
    app.include_router(router)
    app.mount("/images", StaticFiles(directory=os.path.join(folder, "images")), name="images")
    add_error_handlers(app)
    add_error_handler(app, SessionError, not_a_session)
    add_error_handler(app, DiskFull, no_space)
    app.add_middleware(BodyLimits, max_bytes=cfg.max_bytes, timeout_s=cfg.body_timeout_s)
    return app
