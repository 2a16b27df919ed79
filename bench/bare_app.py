"""The baseline: a bare FastAPI app with the same /healthz route and no middleware."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
