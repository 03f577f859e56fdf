"""`fastpix study serve`: the study page over HTTP (FastAPI + uvicorn, as fastpix serve), answers to a file.

    GET  /               the page (index.html); ?observer=ID names the observer, ?model=NAME fixes the model
    GET  /images/...     the study's images
    POST /api/answers    one whole session (answers.py); 200 {"saved": true} once it is on disk (fsync'ed)
    GET  /healthz        200 {"status": "ok", "sessions": n saved by this process}

Errors answer JSON {"error": "..."}: not JSON or not a session of this study 400, over max_bytes 413. Shutdown
(SIGTERM / Ctrl-C) stops accepting connections and finishes the submissions already received.
"""
from __future__ import annotations

import json
import os

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from fastpix.study.answers import AnswersFile, SessionError, check_session
from fastpix.study.page import ANSWERS_FILE, PAGE_FILE, load_study


class TooLarge(Exception):
    pass


async def read_body(request: Request, max_bytes: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise TooLarge(f"submission is {length} bytes; this server accepts at most {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked uploads carry no length: count as they come
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"submission exceeds {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(folder: str, cfg=None) -> FastAPI:
    """The study app for the study folder `folder` (written by `fastpix study make`), with a StudyServeConfig."""
    from fastpix.config import StudyServeConfig

    cfg = cfg or StudyServeConfig()
    study = load_study(folder)
    answers = AnswersFile(cfg.answers or os.path.join(folder, ANSWERS_FILE))
    app = FastAPI(title="fastpix study", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.study, app.state.answers, app.state.saved = study, answers, 0

    def error(status: int, message: str):
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/")
    async def page():
        return FileResponse(os.path.join(folder, PAGE_FILE), headers={"Cache-Control": "no-store"})

    @app.post("/api/answers")
    async def submit(request: Request):
        try:
            payload = json.loads(await read_body(request, cfg.max_bytes))
            session = check_session(payload, study)
        except TooLarge as exc:
            return error(413, str(exc))
        except SessionError as exc:
            return error(400, f"not a session of this study: {exc}")
        except (ValueError, RecursionError) as exc:
            return error(400, f"the body is not JSON: {type(exc).__name__}: {str(exc)[:200]}")
        await run_in_threadpool(answers.append, session)
        app.state.saved += 1
        return {"saved": True, "trials": len(session["trials"])}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "sessions": app.state.saved}

    app.mount("/images", StaticFiles(directory=os.path.join(folder, "images")), name="images")
    return app


def run(app, host: str, port: int, graceful_timeout_s: float = 10.0):
    """Serve in this thread until SIGINT/SIGTERM (the CLI)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=graceful_timeout_s, log_level="info")
