"""Run a parameter sweep as a Ray job: `python -m cluster.sweep CONFIG --output DIR_OR_URI`.

Submit it with `ray job submit --working-dir . -- python -m cluster.sweep configs/sweeps/small.yaml
--output /abs/path` (README: "Parameter sweeps as Ray jobs"). The driver validates the config, starts
the worker actors (sweep_ray.WorkerPool), claims the output (refusing one that holds a different sweep
or model), skips the shards already written, runs the rest on the actors, prints one progress line per
shard, and writes summary.json, plots and report.md over every finished shard. Exit status: 0 when
every shard is done, 1 when some failed (rerun the same command to retry only those), 2 for a bad config
or output.
"""

from __future__ import annotations

import time

DRIVER_STARTED = time.time()  # before the heavy imports: the job timeline starts here

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from .sweep_config import ConfigError, SweepConfig, load_config  # noqa: E402
from .sweep_store import StoreError, SweepStore  # noqa: E402

EXIT_OK, EXIT_FAILED_SHARDS, EXIT_BAD_INPUT = 0, 1, 2


def log(message: str) -> None:
    """One progress line, flushed at once so `ray job logs --follow` shows it."""
    print(f"[sweep] {message}", flush=True)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


@dataclass
class Progress:
    """Counts finished shards and maps; prints rate and ETA for the shards of this run."""

    config: SweepConfig
    pending: list[int]
    started: float = field(default_factory=time.perf_counter)
    rows: dict[int, dict] = field(default_factory=dict)
    maps: int = 0

    def __call__(self, row: dict) -> None:
        shard = int(row["shard"])
        self.rows[shard] = row
        size = len(self.config.shard_range(shard))
        done = len(self.rows)
        elapsed = time.perf_counter() - self.started
        if row["ok"]:
            self.maps += size
            rate = self.maps / elapsed
            left = sum(len(self.config.shard_range(s)) for s in self.pending if s not in self.rows)
            log(f"{elapsed:7.1f}s shard {shard} done ({size} maps; generate {row['generate']:.2f}s, "
                f"infer {row['infer']:.2f}s, write {row['write']:.2f}s) | {done}/{len(self.pending)} shards, "
                f"{self.maps} maps, {rate:.1f} maps/s, ETA {_duration(left / rate) if rate else '?'}")
        else:
            log(f"{elapsed:7.1f}s shard {shard} FAILED after {row['attempts']} attempts: {row['error']} | "
                f"{done}/{len(self.pending)} shards")

    def failures(self) -> list[dict]:
        """Failed shards, and shards that never reported back (their worker died past its retries)."""
        failed = [{"shard": s, "error": r["error"]} for s, r in sorted(self.rows.items()) if not r["ok"]]
        lost = [{"shard": s, "error": "lost: its worker process died on every attempt"}
                for s in self.pending if s not in self.rows]
        return sorted(failed + lost, key=lambda f: f["shard"])

    def stage_seconds(self) -> dict[str, float]:
        return {stage: round(sum(r[stage] for r in self.rows.values()), 3) for stage in ("generate", "infer", "write")}


def run(config: SweepConfig, target: str, pause_file: str | None = None) -> int:
    """Run or resume one sweep into `target`; returns the process exit status. While `pause_file` exists,
    no new shard starts (the ones under way finish): an operator can pause a sweep and resume it."""
    from .sweep_ray import WorkerPool

    started = time.perf_counter()
    timeline = {"driver_started": DRIVER_STARTED}
    store = SweepStore.open(target)  # a bad output, or one holding another sweep, fails here at once
    store.check(data_hash=config.data_hash())
    pool = WorkerPool(config, store.target)  # ray.init; the actors load torch and the weights from now on
    timeline["workers_requested"] = time.time()
    try:
        from .sweep_report import write_report  # matplotlib: imported while the actors start

        done = store.done_shards()
        worker = pool.first_ready()  # the model the workers run, checksum-verified as they loaded it
        timeline["first_worker_ready"] = worker["ready_at"]
        model = worker["model"]
        store.claim({
            "name": config.name,
            "data_hash": config.data_hash(),
            "model_sha256": model["sha256"],
            "n_maps": config.n_maps,
            "n_shards": config.n_shards,
            "config": config.model_dump(mode="json"),
        })
        done |= store.done_shards()
        pending = [shard for shard in range(config.n_shards) if shard not in done]
        ready_after = worker["ready_at"] - timeline["workers_requested"]
        log(f"sweep {config.name}: {config.n_maps} maps in {config.n_shards} shards of {config.shard_size} -> "
            f"{store.target}; {len(done)} already done, {len(pending)} to run (workers: {worker['device']}, "
            f"{worker['threads']} torch thread(s); the first was ready {ready_after:.1f}s after it was requested: "
            f"process start, imports and model load, {worker['load_s']:.1f}s of it in its constructor)")
        progress = Progress(config, pending)
        pool.run(pending, progress, paused=(lambda: Path(pause_file).exists()) if pause_file else lambda: False)
    finally:
        pool.shutdown()
    timeline["pipeline_finished"] = time.time()
    pipeline_seconds = timeline["pipeline_finished"] - timeline["first_worker_ready"]  # while shards ran
    failed = progress.failures()
    for failure in failed:
        log(f"shard {failure['shard']} not written: {failure['error']}")
    summary = write_report(store, config, model, failed)
    overall = summary["overall"]
    accuracy = overall["classification_accuracy"]
    log(f"wrote summary.json, report.md and plots for {summary['n_maps']} maps; M_vir median |err| "
        f"{overall['M_vir']['median_abs_error']:.3f} dex, scenario accuracy "
        f"{'-' if accuracy is None else f'{accuracy:.3f}'}")
    timeline["report_written"] = time.time()
    finished = {
        "event": "sweep_finished",
        "name": config.name,
        "output": store.target,
        "complete": summary["complete"],
        "maps_run": progress.maps,
        "shards_run": len(pending) - len(failed),
        "shards_skipped": len(done),
        "failed_shards": [f["shard"] for f in failed],
        "pipeline_s": round(pipeline_seconds, 3),
        "total_s": round(time.perf_counter() - started, 3),
        "workers_ready_s": [round(at - timeline["workers_requested"], 3) for at in pool.ready_at],
        "stage_s": progress.stage_seconds(),  # summed over shards: worker-seconds, which overlap in wall time
        "timeline": {key: round(value, 3) for key, value in timeline.items()},
    }
    print(json.dumps(finished), flush=True)
    if failed:
        log(f"{len(failed)} of {config.n_shards} shards failed; rerun the same command to retry only those")
        return EXIT_FAILED_SHARDS
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="sweep config YAML (configs/sweeps/*.yaml)")
    parser.add_argument("--output", required=True, help="output directory or URI (file://, s3://, ...)")
    parser.add_argument("--pause-file", metavar="PATH", help="while this file exists, start no new shard")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        return run(config, args.output, args.pause_file)
    except (ConfigError, StoreError) as error:
        print(f"[sweep] ERROR: {error}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
