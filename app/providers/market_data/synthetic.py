"""A deterministic market-data generator: no network, any valid symbol, the same answer for the same query.

The log-price of a symbol is a function of (symbol, time) alone: a sum of octaves of piecewise-linear
noise whose node values are hashed from (symbol, octave, node index) with splitmix64, with amplitudes
scaled like Brownian motion (the variance of a move grows with its duration). The result is a random walk
at every timeframe — minute bars and daily bars of one symbol are views of the same path — that needs no
state and no history replay: any instant in any year is evaluated in O(octaves).

Per symbol (hashed): a starting price between 5 and 500, an annualised volatility between 15 % and 60 %
and a typical volume. Bars are aligned on epoch multiples of the timeframe (``EpochGrid``; daily bars at
00:00 UTC) and run round the clock (no market hours): a query gets every grid instant from ``start``
(rounded up) to ``end`` (inclusive), at most ``limit``; only completed bars are returned. Open = the path
at the bar's start, close = at its end, high/low = the extremes of 9 points across the bar widened by a
small hashed wick; prices have cents (four decimals below 1.00), so ``low <= open, close <= high`` always
holds exactly. Volume grows with the bar's length and its absolute return. Quotes: ``last`` is the path at
the current second, bid/ask straddle it by ~2 bps (at least one tick). More than ``SYNC_MAX_BARS`` bars
are generated in a thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import math
import time
from collections.abc import Callable
from decimal import Decimal

import numpy as np

from app.providers.market_data.base import EPOCH_GRIDS, Bar, BarsQuery, Grid, Quote, Timeframe

_OCTAVES = 12
_BASE_SCALE = 15.0  # seconds of the finest octave
_SCALES = np.array([_BASE_SCALE * 4.0**k for k in range(_OCTAVES)])  # 15 s … ~2 years
# Sum over octaves of the increment variance of piecewise-linear noise ~ (1 + 1/3) + 1/3 times σ²Δ.
_NORMALISE = 1.0 / math.sqrt(5.0 / 3.0)
_SECONDS_PER_YEAR = 365.25 * 86400
_SAMPLES_PER_BAR = 8
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
# A bars query is ~0.8 ms of NumPy plus ~12 µs a bar: above this many bars it runs in a thread, so the
# event loop is never held for more than ~1.5 ms by one query.
SYNC_MAX_BARS = 50


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        mixed: np.ndarray = x ^ (x >> np.uint64(31))
        return mixed


def _normal(h: np.ndarray) -> np.ndarray:
    """An approximately standard normal value from each 64-bit hash (Irwin–Hall of four 16-bit uniforms)."""
    total = np.zeros(h.shape, dtype=np.float64)
    for shift in (0, 16, 32, 48):
        total += ((h >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.float64) / 65536.0
    return (total - 2.0) * math.sqrt(3.0)


def _symbol_seed(symbol: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(symbol.encode(), digest_size=8, person=b"tradedesk-md").digest(), "big"
    )


class _Profile:
    __slots__ = ("seed", "log_p0", "sigma_per_second", "volume_per_minute")

    def __init__(self, symbol: str) -> None:
        self.seed = np.uint64(_symbol_seed(symbol))
        u = _splitmix64(np.array([self.seed ^ np.uint64(k) for k in (1, 2, 3)], dtype=np.uint64))
        unit = (u >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        self.log_p0 = math.log(5.0) + float(unit[0]) * (math.log(500.0) - math.log(5.0))
        sigma_annual = 0.15 + 0.45 * float(unit[1])
        self.sigma_per_second = sigma_annual / math.sqrt(_SECONDS_PER_YEAR)
        self.volume_per_minute = 500.0 * math.exp(4.0 * float(unit[2]))  # ~500 … ~27,000 shares a minute

    def hashed(self, salt: int, index: np.ndarray) -> np.ndarray:
        """Hash of (symbol, salt, integer index) for an int64 array of indices."""
        with np.errstate(over="ignore"):
            key = self.seed ^ (np.uint64(salt) * np.uint64(0xD1B54A32D192ED03))
            return _splitmix64(index.astype(np.int64).view(np.uint64) ^ key)


def _log_prices(profile: _Profile, seconds: np.ndarray) -> np.ndarray:
    """Log-price of the symbol at each time (float64 epoch seconds, any shape)."""
    out = np.full(seconds.shape, profile.log_p0, dtype=np.float64)
    for k, scale in enumerate(_SCALES):
        position = seconds / scale
        node = np.floor(position)
        frac = position - node
        node_i = node.astype(np.int64)
        g0 = _normal(profile.hashed(k + 1, node_i))
        g1 = _normal(profile.hashed(k + 1, node_i + 1))
        amplitude = profile.sigma_per_second * math.sqrt(scale / 2.0) * _NORMALISE
        out += amplitude * (g0 + (g1 - g0) * frac)
    return out


def _round_prices(values: np.ndarray) -> np.ndarray:
    """Cents, or 1/100 of a cent below 1.00; never below the smallest tick."""
    cents = np.round(values, 2)
    fine = np.round(values, 4)
    out = np.where(values >= 1.0, cents, fine)
    return np.maximum(out, 0.0001)


def _dec(value: float) -> Decimal:
    text = f"{value:.2f}" if value >= 1.0 else f"{value:.4f}"
    return Decimal(text)


class SyntheticProvider:
    """Deterministic per symbol and time; ``clock`` (epoch seconds) only decides what "now" is."""

    name = "synthetic"

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._profiles: dict[str, _Profile] = {}
        # The quote is a function of (symbol, whole second): computed once per second per symbol (about
        # a millisecond of NumPy each), reused by every order priced in that second.
        self._quotes: dict[str, Quote] = {}

    def _profile(self, symbol: str) -> _Profile:
        profile = self._profiles.get(symbol)
        if profile is None:
            if len(self._profiles) > 4096:
                self._profiles.clear()
            profile = self._profiles[symbol] = _Profile(symbol)
        return profile

    def grid(self, timeframe: Timeframe) -> Grid:
        return EPOCH_GRIDS[timeframe]

    def price_at(self, symbol: str, seconds: np.ndarray) -> np.ndarray:
        """The unrounded path (for tests and notebooks)."""
        prices: np.ndarray = np.exp(_log_prices(self._profile(symbol), np.asarray(seconds, dtype=np.float64)))
        return prices

    async def latest_quote(self, symbol: str) -> Quote:
        now = math.floor(self.clock())
        cached = self._quotes.get(symbol)
        if cached is not None and cached.timestamp.timestamp() == now:
            return cached
        if len(self._quotes) > 4096:
            self._quotes.clear()
        quote = self._quotes[symbol] = self._quote_at(symbol, now)
        return quote

    def _quote_at(self, symbol: str, now: int) -> Quote:
        last = float(_round_prices(self.price_at(symbol, np.array([float(now)])))[0])
        tick = 0.01 if last >= 1.0 else 0.0001
        half_spread = max(tick, last * 0.0002)
        bid = math.floor((last - half_spread) / tick) * tick
        ask = math.ceil((last + half_spread) / tick) * tick
        bid = max(bid, tick)
        if ask <= bid:
            ask = bid + tick
        return Quote(
            symbol=symbol,
            bid=_dec(bid),
            ask=_dec(ask),
            last=_dec(last),
            timestamp=dt.datetime.fromtimestamp(now, dt.UTC),
        )

    async def bars(self, query: BarsQuery) -> list[Bar]:
        if self._span(query)[1] > SYNC_MAX_BARS:  # keep the event loop free
            return await asyncio.to_thread(self.bars_sync, query)
        return self.bars_sync(query)

    def _span(self, query: BarsQuery) -> tuple[int, int]:
        """The first bar's start (epoch seconds) and how many bars the query gets."""
        step = query.timeframe.seconds
        grid = self.grid(query.timeframe)
        start = int(grid.ceil(query.start).timestamp())  # exact: grid instants are whole seconds
        # Only completed bars: a bar's close is the path at its end, which must not lie in the future.
        end = min(int(grid.floor(query.end).timestamp()), math.floor(self.clock()) - step)
        if start > end:
            return start, 0
        return start, min(query.limit, (end - start) // step + 1)

    def bars_sync(self, query: BarsQuery) -> list[Bar]:
        step = query.timeframe.seconds
        start, count = self._span(query)
        if count <= 0:
            return []
        profile = self._profile(query.symbol)
        starts = start + step * np.arange(count, dtype=np.float64)
        offsets = np.linspace(0.0, float(step), _SAMPLES_PER_BAR + 1)
        path = np.exp(_log_prices(profile, starts[:, None] + offsets[None, :]))
        bar_index = (starts // step).astype(np.int64)

        # Wicks: the path between samples can reach a little beyond the sampled extremes.
        wick_scale = profile.sigma_per_second * math.sqrt(step / _SAMPLES_PER_BAR) * 0.5
        up = np.abs(_normal(profile.hashed(101 + step, bar_index))) * wick_scale
        down = np.abs(_normal(profile.hashed(202 + step, bar_index))) * wick_scale
        opens = _round_prices(path[:, 0])
        closes = _round_prices(path[:, -1])
        highs = _round_prices(path.max(axis=1) * (1.0 + up))
        lows = _round_prices(path.min(axis=1) * (1.0 - down))
        highs = np.maximum(highs, np.maximum(opens, closes))
        lows = np.minimum(lows, np.minimum(opens, closes))

        # Volume: proportional to the bar's length, lognormal noise, more when the bar moved more.
        moves = np.abs(np.log(path[:, -1] / path[:, 0])) / (profile.sigma_per_second * math.sqrt(step))
        noise = np.exp(0.35 * _normal(profile.hashed(303 + step, bar_index)))
        volumes = np.maximum(
            1.0, np.round(profile.volume_per_minute * (step / 60.0) * noise * (0.6 + 0.5 * moves))
        )

        return [
            Bar(
                t=dt.datetime.fromtimestamp(int(starts[i]), dt.UTC),
                o=_dec(float(opens[i])),
                h=_dec(float(highs[i])),
                l=_dec(float(lows[i])),
                c=_dec(float(closes[i])),
                v=Decimal(int(volumes[i])),
            )
            for i in range(count)
        ]

    async def aclose(self) -> None:
        return None
