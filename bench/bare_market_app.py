"""The baseline for bench_market: a bare FastAPI app answering a quotes-like route from a dict.

Same path and body shape as GET /v1/market-data/quotes/{symbol}, no middleware, no limiter, no cache."""

from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()

_QUOTE = {
    "symbol": "AAPL",
    "bid": "189.95",
    "ask": "190.05",
    "last": "190.01",
    "timestamp": "2024-01-02T15:30:00Z",
}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/market-data/quotes/{symbol}")
async def quote(symbol: str) -> JSONResponse:
    return JSONResponse({**_QUOTE, "symbol": symbol.upper()}, headers={"X-Cache": "HIT"})
