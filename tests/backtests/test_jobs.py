"""Backtest jobs over HTTP into PostgreSQL, with the real job sandbox: upload → 202 → done with the same
result as run_backtest on the file, a real PNG, line-numbered 422s, the caps (413, the body-limit exemption,
unfinished jobs per user), ownership (404), and the spool directory emptied."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import asyncpg
import pytest
from matplotlib import image as mpimg

from app.quant.backtest import run_backtest
from tests.backtests.helpers import HEADER, StreamedUpload, bar_lines, bars_csv, finished, upload
from tests.orders.helpers import trader
from tests.support import db as dbsupport
from tests.support.metrics import grew, scrape
from tests.support.problems import assert_problem
from tests.support.servers import eventually

pytestmark = pytest.mark.asyncio


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def make_backtests(make_client, spool):
    async def factory(**overrides):
        overrides.setdefault("backtest_spool_dir", str(spool))
        return await make_client(**overrides)

    return factory


async def test_an_upload_runs_to_the_same_result_as_run_backtest(make_backtests, spool, tmp_path) -> None:
    client = await make_backtests()
    _, auth = await trader(client)
    data = bars_csv(5_000)
    before = await scrape(client)
    r = await upload(client, auth, data, fast=5, slow=30, commission="0.001", initial_cash=50000)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "queued" and r.headers["location"] == f"/v1/backtests/{body['id']}"

    job = await finished(client, auth, body["id"])
    assert job["status"] == "done", job
    assert job["progress"] == 1.0 and job["error"] is None and job["rows"] == 5_000
    assert job["params"] == {"fast": 5, "slow": 30, "commission": 0.001, "initial_cash": 50000.0}
    reference = tmp_path / "reference.csv"
    reference.write_bytes(data)
    assert job["result"] == run_backtest(reference, fast=5, slow=30, commission=0.001, initial_cash=50000.0)
    assert job["result"]["n_trades"] > 0

    png = await client.get(f"/v1/backtests/{body['id']}/equity.png", headers=auth)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    pixels = mpimg.imread(io.BytesIO(png.content), format="png")
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0  # a real, non-blank image

    # the upload is removed once the job is done (right after the row says so)
    await eventually(lambda: list(spool.glob("*.csv*")) == [], within=10, what="the spool emptied")
    after = await scrape(client)
    assert grew(before, after, "backtest_uploads_total", outcome="accepted") == 1
    assert grew(before, after, "backtest_jobs_total", outcome="done") == 1


async def test_defaults_apply_when_parameters_are_omitted(make_backtests, tmp_path) -> None:
    client = await make_backtests()
    _, auth = await trader(client)
    data = bars_csv(600)
    r = await upload(client, auth, data)
    assert r.status_code == 202, r.text
    job = await finished(client, auth, r.json()["id"])
    reference = tmp_path / "reference.csv"
    reference.write_bytes(data)
    assert job["status"] == "done" and job["result"] == run_backtest(reference)


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (b"time,open,high,low,close,volume\n2015-01-02T14:30:00Z,1,1,1,1,1\n", 1, "header"),
        (HEADER + bar_lines(3) + b"2015-01-02T15:00:00Z,abc,1,1,1,1\n", 5, "open"),
        (HEADER + bar_lines(5) + b"2015-01-02T14:31:00Z,1,1,1,1,1\n", 7, ""),  # time goes backwards
        (HEADER + bar_lines(2) + b"2015-01-02T16:00:00Z,1,1,1,-1,1\n", 4, "close"),
        (HEADER + bar_lines(2) + b"2015-01-02T16:00:00Z,1,1,1,nan,1\n", 4, "close"),
        (HEADER + bar_lines(2) + b"not a time,1,1,1,1,1\n", 4, "timestamp"),
        (HEADER + bar_lines(2) + b"2015-01-02T16:00:00Z,1,1,1\n", 4, ""),  # too few fields
    ],
    ids=["header", "non-numeric", "descending", "negative", "nan", "bad-time", "short-row"],
)
async def test_a_malformed_csv_is_a_422_with_the_line_number(
    make_backtests, spool, text, line, needle
) -> None:
    client = await make_backtests()
    _, auth = await trader(client)
    r = await upload(client, auth, text)
    problem = assert_problem(r, 422)
    assert problem["line"] == line
    (error,) = problem["errors"]
    assert error["field"] == "file" and error["message"].startswith(f"line {line}:")
    assert needle in error["message"]
    assert list(spool.glob("*.csv*")) == []  # nothing kept of a refused upload


async def test_a_header_without_rows_is_refused(make_backtests) -> None:
    client = await make_backtests()
    _, auth = await trader(client)
    problem = assert_problem(await upload(client, auth, HEADER), 422)
    assert problem["errors"] == [{"field": "file", "message": "no data rows after the header"}]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"fast": "0"}, "fast"),
        ({"fast": "2.5"}, "fast"),
        ({"fast": "30", "slow": "30"}, "slow"),
        ({"slow": "10001"}, "slow"),
        ({"commission": "1"}, "commission"),
        ({"commission": "-0.1"}, "commission"),
        ({"commission": "NaN"}, "commission"),
        ({"initial_cash": "0"}, "initial_cash"),
        ({"initial_cash": "1e309"}, "initial_cash"),
        ({"initial_cash": "Infinity"}, "initial_cash"),
        ({"leverage": "10"}, "leverage"),
        ({"fast": "'; DROP TABLE backtest_jobs; --"}, "fast"),
    ],
    ids=lambda v: "-".join(f"{k}={v[k]}" for k in v) if isinstance(v, dict) else str(v),
)
async def test_bad_parameters_are_422_naming_the_field(make_backtests, spool, params, field) -> None:
    client = await make_backtests()
    _, auth = await trader(client)
    problem = assert_problem(await upload(client, auth, bars_csv(100), **params), 422)
    assert field in [e["field"] for e in problem["errors"]], problem
    assert list(spool.glob("*.csv*")) == []


async def test_the_multipart_body_is_checked(make_backtests) -> None:
    client = await make_backtests()
    _, auth = await trader(client)
    no_file = await client.post("/v1/backtests", headers=auth, files={"fast": (None, "5")})
    assert assert_problem(no_file, 422)["errors"] == [{"field": "file", "message": "required"}]
    two_files = await client.post(
        "/v1/backtests",
        headers=auth,
        files=[("file", ("a.csv", bars_csv(10))), ("file", ("b.csv", bars_csv(10)))],
    )
    assert assert_problem(two_files, 422)["errors"][0]["field"] == "file"
    as_json = await client.post("/v1/backtests", headers=auth, json={"file": "x"})
    assert_problem(as_json, 415)
    truncated = await client.post(
        "/v1/backtests",
        headers={**auth, "content-type": "multipart/form-data; boundary=xyz"},
        content=b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n' + HEADER,
    )
    assert_problem(truncated, 400)
    anonymous = await client.post("/v1/backtests", files={"file": ("a.csv", bars_csv(10))})
    assert_problem(anonymous, 401)


async def test_uploads_are_exempt_from_max_body_bytes_but_capped_by_their_own_limit(
    make_backtests, spool
) -> None:
    data = bars_csv(2_000)  # ~130 KB: over this MAX_BODY_BYTES, under this BACKTEST_MAX_UPLOAD_BYTES
    client = await make_backtests(max_body_bytes=16 * 1024, backtest_max_upload_bytes=len(data) + 10)
    _, auth = await trader(client)
    ok = await upload(client, auth, data)
    assert ok.status_code == 202, ok.text
    # Other routes keep MAX_BODY_BYTES.
    big_json = await client.patch("/v1/auth/me", headers=auth, json={"bio": "x" * 20_000})
    assert_problem(big_json, 413)

    over = bars_csv(2_100)
    declared = await upload(client, auth, over)  # Content-Length over the route's cap: refused unread
    assert_problem(declared, 413)
    streamed = StreamedUpload(iter([over]))
    chunked = await client.post(
        "/v1/backtests", headers={**auth, "content-type": streamed.content_type}, content=streamed.body()
    )
    problem = assert_problem(chunked, 413)
    assert "BACKTEST_MAX_UPLOAD_BYTES" in problem["detail"]
    await finished(client, auth, ok.json()["id"])
    await eventually(lambda: list(spool.glob("*.csv*")) == [], within=10, what="the spool emptied")


async def test_unfinished_jobs_per_user_are_capped(make_backtests, database_url) -> None:
    client = await make_backtests(backtest_max_active_per_user=2)
    user, auth = await trader(client)
    _, other_auth = await trader(client)
    # Two unfinished jobs, held unfinished by hand: the worker only runs this host's jobs.
    conn = await asyncpg.connect(dbsupport.asyncpg_dsn(database_url))
    try:
        for _ in range(2):
            r = await upload(client, auth, bars_csv(50))
            assert r.status_code == 202
            await conn.execute(
                "UPDATE backtest_jobs SET host = 'elsewhere' WHERE id = $1", uuid.UUID(r.json()["id"])
            )
    finally:
        await conn.close()
    third = await upload(client, auth, bars_csv(50))
    problem = assert_problem(third, 429)
    assert problem["type"].endswith("backtests-active-limit") and third.headers["retry-after"]
    assert (await upload(client, other_auth, bars_csv(50))).status_code == 202  # per user


async def test_a_user_sees_only_their_own_jobs(make_backtests) -> None:
    client = await make_backtests()
    _, auth = await trader(client)
    _, other = await trader(client)
    r = await upload(client, auth, bars_csv(200))
    job_id = r.json()["id"]
    await finished(client, auth, job_id)
    for path in (f"/v1/backtests/{job_id}", f"/v1/backtests/{job_id}/equity.png"):
        assert_problem(await client.get(path, headers=other), 404)
    assert_problem(await client.get("/v1/backtests/00000000-0000-0000-0000-000000000000", headers=auth), 404)
    assert_problem(await client.get("/v1/backtests/not-a-uuid", headers=auth), 422)
    assert_problem(await client.get(f"/v1/backtests/{job_id}"), 401)
