"""Online serving: the project's service (``python -m pipelines.serving``) against ``mlflow models serve``.

    .venv/bin/python -m benchmarks.serving [--state DIR] [--seconds 8]

Both serve the same registered model (``models:/flight_delay@champion``) from one local
SQLite registry, each on one worker, on 127.0.0.1, with the client (aiohttp, asyncio) on the
same cores. Rows are real holdout flights. Measured:

* time from starting the process to its first answer;
* single-row latency p50/p95/p99 at fixed open-loop rates (50, 200, 500 requests/s: requests
  leave on a schedule whatever the answers do, and latency counts from the scheduled time, so
  a server that falls behind shows it), and the highest rate of a ladder with p99 under 10 ms;
* throughput at 100- and 1,000-row batches (one request after another);
* a swap under load: 200 requests/s while ``champion`` moves forward and back twice (failed
  requests, versions seen, answers naming a version no longer live, time from the alias move to
  the first answer from the new version);
* memory (RSS and PSS of the whole process tree) with one model loaded and with a shadow too.

``--state`` reuses a state folder of an earlier run (its registry must hold versions 1 and 2);
otherwise two small models are trained first with the pipeline's own steps (30 days, one epoch:
scoring cost does not depend on how well a model was trained). Nothing is asserted; the table
goes to ``benchmarks/results/serving.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, clean_env, command_line, fresh_state, machine, markdown_table, mib, report

NAME = "flight_delay"
DAY = dt.date(2013, 6, 28)
TRAIN = {
    "preprocess.training_window_days": 30,
    "preprocess.split.validation_days": 7,
    "preprocess.split.holdout_days": 7,
    "train.epochs": 1,
    "evaluate.baseline.max_iter": 1,
}
RATES = (50, 200, 500)
LADDER = (50, 100, 200, 300, 400, 500, 700, 1000, 1400)
TIMEOUT_S = 5.0  # a request unanswered after this counts as failed
WARM_UP_S = 3.0  # single rows at 50/s before the measured runs
MAX_IN_FLIGHT = 256  # the client never holds more open requests than this


# --------------------------------------------------------------------------- state


def _train(state: Path, env: dict[str, str]) -> None:
    """Two versions, both force-promoted (v2 the champion, v1 its previous champion)."""
    code = f"""
import datetime as dt, json
from pipelines.runner import RunContext, run_all, run_evaluate, run_register, run_train
day, base = dt.date.fromisoformat({DAY.isoformat()!r}), json.loads({json.dumps(json.dumps(TRAIN))})
reason = "serving benchmark"
first = run_all(RunContext(dag_id="bench", run_id="r1", run_day=day, overrides=base, force_reason=reason))
ctx = RunContext(dag_id="bench", run_id="r2", run_day=day, overrides={{**base, "train.seed": 7}}, force_reason=reason)
trained = run_train(ctx, first["preprocess"])
run_register(ctx, first["preprocess"], trained, run_evaluate(ctx, first["preprocess"], trained))
"""
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=clean_env(env), check=True, capture_output=True)


def _rows(env: dict[str, str], n: int = 2000) -> list[dict[str, Any]]:
    import pandas as pd

    from pipelines.config import load_params

    features = list(load_params(REPO / "params.yaml").dataset.features.all)
    holdout = next(Path(env["MLOPS_DATA_DIR"]).rglob("splits/holdout.parquet"))
    return json.loads(pd.read_parquet(holdout)[features].head(n).to_json(orient="records"))


def _client(env: dict[str, str]) -> Any:
    import mlflow

    uri = f"sqlite:///{Path(env['MLOPS_HOME']) / 'mlflow' / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, uri)


# --------------------------------------------------------------------------- servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process, its URL and how to ask it for one prediction."""

    def __init__(self, kind: str, env: dict[str, str], state: Path, shadow: bool = False) -> None:
        self.kind, self.port = kind, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(state / f"{kind}{'-shadow' if shadow else ''}.log", "wb")
        child_env = clean_env(env)
        if kind == "ours":
            params = state / ("params-shadow.yaml" if shadow else "params.yaml")
            _params_file(params, shadow)
            child_env |= {"MLOPS_SERVE_PORT": str(self.port), "MLOPS_PARAMS": str(params)}
            cmd = [sys.executable, "-m", "pipelines.serving"]
            self.path = "/predict"
        else:
            child_env |= {
                "MLFLOW_TRACKING_URI": f"sqlite:///{Path(env['MLOPS_HOME']) / 'mlflow' / 'mlflow.db'}",
                "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",  # it runs `uvicorn` from there
            }
            cmd = [
                str(Path(sys.executable).parent / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{NAME}@champion",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-w",
                "1",
            ]
            self.path = "/invocations"
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            cmd, cwd=REPO, env=child_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def body(self, rows: list[dict[str, Any]]) -> bytes:
        if self.kind == "ours":
            return json.dumps(rows[0] if len(rows) == 1 else rows).encode()
        return json.dumps({"dataframe_records": rows}).encode()

    def first_answer(self, row: dict[str, Any], timeout: float = 300) -> float:
        """Seconds from the start of the process to its first 200 answer."""
        import urllib.error
        import urllib.request

        while time.monotonic() - self.started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode}")
            request = urllib.request.Request(
                self.url + self.path, self.body([row]), {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return time.monotonic() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} gave no answer within {timeout} s")

    def memory(self) -> tuple[int, int]:
        """RSS and PSS of the process and its descendants, bytes."""
        import psutil

        root = psutil.Process(self.process.pid)
        rss = pss = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            rss, pss = rss + info.rss, pss + info.pss
        return rss, pss

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()


def _params_file(path: Path, shadow: bool) -> None:
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["serve"] = {
        **raw.get("serve", {}),
        "watch_interval_seconds": 1,
        "shadow_alias": "challenger" if shadow else None,
    }
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")


def _wait_model(url: str, predicate, timeout: float = 120) -> dict[str, Any]:
    import urllib.request

    deadline = time.monotonic() + timeout
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/model", timeout=10) as response:
                info = json.loads(response.read())
        except OSError:  # a busy server may answer late: ask again
            continue
        if predicate(info):
            return info
        time.sleep(0.1)
    raise RuntimeError(f"timed out; /model says {info}")


# --------------------------------------------------------------------------- load


@contextlib.contextmanager
def _client_gc_off():
    """No garbage collection in the client while it measures: a full collection of the results it
    holds paused it for about 30 ms, which the open loop counted as the server's latency."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _measure(run: Any) -> Any:
    """``asyncio.run`` of a load coroutine, with the client's garbage collection off."""
    with _client_gc_off():
        return asyncio.run(run)


async def _open_loop(
    server: Server, bodies: list[bytes], rate: float, seconds: float
) -> list[tuple[float, float, int, str]]:
    """Requests at ``rate`` per second for ``seconds``: (scheduled, done, status, version) each."""
    import aiohttp

    results: list[tuple[float, float, int, str]] = []
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(at: float, body: bytes) -> None:
            status, version = 0, "?"
            async with gate:
                try:
                    async with session.post(
                        server.url + server.path, data=body, headers={"Content-Type": "application/json"}
                    ) as response:
                        status = response.status
                        data = await response.read()
                        if server.kind == "ours" and status == 200:
                            version = json.loads(data)["model_version"]
                except (TimeoutError, aiohttp.ClientError):
                    status = -1
            results.append((at, time.monotonic(), status, version))

        start = time.monotonic() + 0.05
        tasks = []
        n = int(rate * seconds)
        for i in range(n):
            at = start + i / rate
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(at, bodies[i % len(bodies)])))
        await asyncio.gather(*tasks)
    return results


def _latency(results: list[tuple[float, float, int, str]]) -> dict[str, float]:
    ok = np.array([done - at for at, done, status, _ in results if status == 200]) * 1000
    failed = sum(1 for r in results if r[2] != 200)
    if not len(ok):
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "failed": failed, "n": len(results)}
    p50, p95, p99 = np.percentile(ok, [50, 95, 99])
    return {"p50": p50, "p95": p95, "p99": p99, "failed": failed, "n": len(results)}


def _batches(server: Server, rows: list[dict[str, Any]], size: int, seconds: float) -> float:
    """Rows per second, one batch request after another for about ``seconds``."""
    import urllib.request

    body = server.body(rows[:size])
    done, start = 0, time.monotonic()
    while time.monotonic() - start < seconds or done < 3 * size:
        request = urllib.request.Request(server.url + server.path, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
        done += size
    return done / (time.monotonic() - start)


async def _swap(server: Server, client: Any, bodies: list[bytes], rate: float) -> dict[str, Any]:
    """Single rows at ``rate`` while ``champion`` moves 2 -> 1 -> 2 -> 1 -> 2; the load stops 2 s after the last move."""
    results: list[tuple[float, float, int, str]] = []
    moves: list[dict[str, Any]] = []
    stop = asyncio.Event()

    import aiohttp

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_IN_FLIGHT), timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)
    ) as session:

        async def one(at: float, body: bytes) -> None:
            status, version = 0, "?"
            try:
                async with session.post(
                    server.url + server.path, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    status = response.status
                    data = await response.read()
                    if status == 200:
                        version = json.loads(data)["model_version"]
            except (TimeoutError, aiohttp.ClientError):
                status = -1
            results.append((at, time.monotonic(), status, version))

        async def load() -> None:
            tasks, i, start = [], 0, time.monotonic()
            while not stop.is_set():
                at = start + i / rate
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(at, bodies[i % len(bodies)])))
                i += 1
            await asyncio.gather(*tasks)

        async def mover() -> None:
            await asyncio.sleep(2)
            for target in ("1", "2", "1", "2"):
                moved = time.monotonic()
                await asyncio.to_thread(client.set_registered_model_alias, NAME, "champion", target)
                info = await asyncio.to_thread(_wait_model, server.url, lambda m, t=target: m["version"] == t)
                moves.append(
                    {"to": target, "moved": moved, "live": time.monotonic(), "load_seconds": info["load_seconds"]}
                )
                await asyncio.sleep(2)
            stop.set()

        await asyncio.gather(load(), mover())
    return {"moves": moves, "results": results}


def _swap_summary(swap: dict[str, Any]) -> dict[str, Any]:
    results, moves = swap["results"], swap["moves"]
    failed = sum(1 for r in results if r[2] != 200)
    seen = sorted({r[3] for r in results if r[2] == 200})
    # An answer sent after /model showed the new version must come from it (until the next move).
    stale = 0
    for k, move in enumerate(moves):
        until = moves[k + 1]["moved"] if k + 1 < len(moves) else float("inf")
        stale += sum(1 for at, done, status, v in results if move["live"] < at and done < until and v != move["to"])
    first_new = []
    for move in moves:
        answers = [done for at, done, status, v in results if v == move["to"] and at >= move["moved"]]
        first_new.append(min(answers) - move["moved"] if answers else float("nan"))
    return {
        "requests": len(results),
        "failed": failed,
        "versions_seen": seen,
        "stale_answers": stale,
        "alias_move_to_first_new_answer_s": first_new,
        "load_seconds": [m["load_seconds"] for m in moves],
        "latency": _latency(results),
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.split("\n")[0])
    p.add_argument("--state", type=Path, help="reuse this state folder (registry with versions 1 and 2)")
    p.add_argument("--seconds", type=float, default=8.0, help="duration of each fixed-rate run")
    p.add_argument(
        "--quick",
        action="store_true",
        help="only pipelines.serving's latency, ladder and batches, printed (no anchor, swap or report): for iterating",
    )
    args = p.parse_args(argv)

    if args.state:
        state = args.state.resolve()
        env = {"MLOPS_HOME": str(state / "home"), "MLOPS_DATA_DIR": str(state / "data"), "MLOPS_VERSIONING": "off"}
    else:
        state, env = fresh_state("serving", versioning=False)
        print(f"training two models in {state} ...", flush=True)
        _train(state, env)
    client = _client(env)
    client.set_registered_model_alias(NAME, "champion", "2")
    client.set_registered_model_alias(NAME, "challenger", "1")
    rows = _rows(env)
    raw: dict[str, Any] = {
        "machine": machine(),
        "measured": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "servers": {},
    }

    if args.quick:
        print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    for kind in ("ours",) if args.quick else ("ours", "mlflow"):
        server = Server(kind, env, state)
        try:
            out: dict[str, Any] = {"first_answer_s": server.first_answer(rows[0])}
            print(f"{kind}: first answer after {out['first_answer_s']:.1f} s", flush=True)
            out["memory_one_model"] = server.memory()
            singles = [server.body([r]) for r in rows]
            _measure(_open_loop(server, singles, 50, WARM_UP_S))  # first calls of each code path: not measured
            for rate in RATES:
                out[f"rate_{rate}"] = _latency(_measure(_open_loop(server, singles, rate, args.seconds)))
                print(f"{kind} {rate}/s: {out[f'rate_{rate}']}", flush=True)
            best = None
            for rate in LADDER:
                stats = _latency(_measure(_open_loop(server, singles, rate, min(args.seconds, 5))))
                out[f"ladder_{rate}"] = stats
                if stats["failed"] or not stats["p99"] < 10:
                    break
                best = rate
            out["max_rate_p99_under_10ms"] = best
            for size in (100, 1000):
                with _client_gc_off():
                    out[f"batch_{size}_rows_per_s"] = _batches(server, rows, size, 4)
            out["memory_after_load"] = server.memory()
            if args.quick:
                print(json.dumps(out, indent=1, default=str), flush=True)
                print(f"load average at the end: {os.getloadavg()[0]:.1f}", flush=True)
                return 0
            if kind == "ours":
                out["swap"] = _swap_summary(_measure(_swap(server, client, singles, 200)))
                print(f"swap: {out['swap']}", flush=True)
        finally:
            server.stop()
        raw["servers"][kind] = out

    shadowed = Server("ours", env, state, shadow=True)
    try:
        shadowed.first_answer(rows[0])
        _wait_model(shadowed.url, lambda m: (m.get("shadow") or {}).get("version") == "1")
        time.sleep(1)
        raw["servers"]["ours"]["memory_two_models"] = shadowed.memory()
    finally:
        shadowed.stop()

    ours, anchor = raw["servers"]["ours"], raw["servers"]["mlflow"]

    def ms(stats: dict[str, float]) -> str:
        text = f"{stats['p50']:.1f} / {stats['p95']:.1f} / {stats['p99']:.1f}"
        return text + (f" ({stats['failed']} of {stats['n']} failed)" if stats["failed"] else "")

    table_rows = [["time to first answer (s)", f"{ours['first_answer_s']:.1f}", f"{anchor['first_answer_s']:.1f}"]]
    for rate in RATES:
        table_rows.append(
            [f"single rows at {rate}/s: p50 / p95 / p99 (ms)", ms(ours[f"rate_{rate}"]), ms(anchor[f"rate_{rate}"])]
        )
    table_rows.append(
        [
            f"highest rate of {', '.join(map(str, LADDER))}/s with p99 < 10 ms",
            ours["max_rate_p99_under_10ms"] or "none",
            anchor["max_rate_p99_under_10ms"] or "none",
        ]
    )
    for size in (100, 1000):
        table_rows.append(
            [
                f"{size:,}-row batches (rows/s)",
                f"{ours[f'batch_{size}_rows_per_s']:,.0f}",
                f"{anchor[f'batch_{size}_rows_per_s']:,.0f}",
            ]
        )
    swap = ours["swap"]
    table_rows.append(
        [
            "swap under load (200/s, alias moved 4 times): failed / stale answers / versions seen",
            f"{swap['failed']} of {swap['requests']} / {swap['stale_answers']} / {', '.join(swap['versions_seen'])}",
            "does not follow the alias",
        ]
    )
    table_rows.append(
        [
            "alias move to first answer from the new version (s; its load)",
            ", ".join(
                f"{a:.1f} ({b:.1f})"
                for a, b in zip(swap["alias_move_to_first_new_answer_s"], swap["load_seconds"], strict=True)
            ),
            "-",
        ]
    )
    table_rows.append(["latency during the swaps: p50 / p95 / p99 (ms)", ms(swap["latency"]), "-"])
    rss1, pss1 = ours["memory_one_model"]
    rss2, pss2 = ours["memory_two_models"]
    arss, apss = anchor["memory_one_model"]
    table_rows.append(
        [
            "memory at the first answer, one model: RSS / PSS (MiB)",
            f"{mib(rss1)} / {mib(pss1)}",
            f"{mib(arss)} / {mib(apss)}",
        ]
    )
    (rss3, pss3), (arss3, apss3) = ours["memory_after_load"], anchor["memory_after_load"]
    table_rows.append(
        [
            "memory after the load above, one model: RSS / PSS (MiB)",
            f"{mib(rss3)} / {mib(pss3)}",
            f"{mib(arss3)} / {mib(apss3)}",
        ]
    )
    table_rows.append(
        ["memory at the first answer, two models (live + shadow): RSS / PSS (MiB)", f"{mib(rss2)} / {mib(pss2)}", "-"]
    )
    table = markdown_table(["", "pipelines.serving", "mlflow models serve"], table_rows)
    notes = [
        "Both on one worker, 127.0.0.1, the client (aiohttp, open loop: latency from the scheduled send time) on the",
        "same cores. The machine is shared: other work ran on its 2 cores during the run (load average above), so",
        f"the figures are pessimistic and vary from run to run. Each server had {WARM_UP_S:.0f} s of 50 requests/s before the"
        " measured runs. Models: 30 days, one epoch (the same architecture and",
        f"scoring cost as a `make pipeline` champion). Requests failing or slower than {TIMEOUT_S:.0f} s count as failed.",
        f"At most {MAX_IN_FLIGHT} requests in flight; the client's garbage collection is off while it measures;",
        "the watch interval was 1 s. pipelines.serving also writes",
        "every served row to the served log and keeps its metrics; mlflow models serve records nothing.",
    ]
    report(
        "serving", "Online serving: pipelines.serving against mlflow models serve", command_line(), table, raw, notes
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
