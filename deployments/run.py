"""`lensing-serve serve_config.yaml` (also `python -m deployments.run`): Serve's `serve run` on a new local Ray.

Plain `serve run serve_config.yaml` trips on two things Ray reads from the file `ray_current_cluster` in
its temp dir (`/tmp/ray`), which `ray start` writes and nothing removes when that Ray dies
(docs/design.md section 9):

1. Without an address, `serve run` joins the Ray the file names; after an unclean stop that is a dead GCS,
   retried for minutes. `serve run --address=local` avoids that, but:
2. A job submitted to a Ray that `ray.init()` started gets its driver's address from Ray's job supervisor,
   which reads the same file (and, with no file, takes any GCS it finds among the machine's processes,
   another user's included). So `ray job submit` to `serve run`'s Ray sent sweeps to a dead or a foreign
   cluster whenever more than one Ray ran on the machine.

This command starts a new local Ray (`ray.init(address="local")`), records its address in that file as
`ray start` does (so jobs find it), runs Serve's own `serve run` command on it, and on Ctrl-C or SIGTERM
stops Serve and the Ray and removes the file if it still names this Ray.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from pathlib import Path

ADDRESS_FILE = "ray_current_cluster"
DASHBOARD_AGENT_PORT = 52365  # fixed in Ray 2.60 for a ray.init() Ray; `ray job submit` needs its agent


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl-C: Serve shut down, the address file removed, Ray stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lensing-serve", description="Run a Serve config (serve_config.yaml) on a new local Ray of its own; "
        "Ctrl-C stops both. For a Ray cluster that is already running, use `serve deploy CONFIG -a DASHBOARD`.")
    parser.add_argument("config", help="serve config YAML, e.g. serve_config.yaml")
    parser.add_argument("--temp-dir", help="Ray's temp dir (default: Ray's own, /tmp/ray or $RAY_TMPDIR/ray)")
    args = parser.parse_args(argv)
    if not Path(args.config).is_file():
        parser.error(f"no such config file: {args.config}")

    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.scripts import run as serve_run

    if _listening(DASHBOARD_AGENT_PORT):
        print(f"lensing-serve: warning: port {DASHBOARD_AGENT_PORT} is taken (another Ray's dashboard agent?): the "
              "service will run, but `ray job submit` to its Ray will fail with 'No available agent'. Stop that "
              "Ray first to submit sweeps here.", file=sys.stderr, flush=True)
    context = ray.init(address="local", namespace=SERVE_NAMESPACE, _temp_dir=args.temp_dir)
    signal.signal(signal.SIGTERM, _interrupt)  # after ray.init, which sets its own (sys.exit: no serve.shutdown)
    info: dict = context.address_info  # type: ignore[attr-defined]  # a RayContext: a local Ray was started
    gcs_address = info["gcs_address"]
    address_file = Path(info["session_dir"]).parent / ADDRESS_FILE  # the temp dir of this Ray
    address_file.write_text(gcs_address)
    print(f"lensing-serve: Ray at {gcs_address} (recorded in {address_file}); dashboard "
          f"http://{context.dashboard_url}, token: `ray get-auth-token`", flush=True)
    try:
        serve_run.main(["--address", gcs_address, args.config], prog_name="serve run", standalone_mode=False)
    except KeyboardInterrupt:  # before serve run's own handler was in place
        pass
    except SystemExit as stop:  # serve run exits this way after Ctrl-C
        return stop.code if isinstance(stop.code, int) else 0
    finally:
        try:
            if address_file.read_text().strip() == gcs_address:
                address_file.unlink()
        except OSError:
            pass
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
