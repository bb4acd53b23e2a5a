"""``make cluster``: run the e2e control plane in the foreground until Ctrl-C.

For poking at the webhook by hand with the same apiserver the e2e tests use:
start this in one terminal, paste the printed ``export KUBECONFIG=...`` into
another, and use kubectl as usual. Everything (certificates, etcd data,
logs) lives in a temporary directory that is removed on exit.

Run as ``python -m harness.kube.run_cluster`` from the repository root.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from harness.kube.binaries import ControlPlaneError, build_binaries
from harness.kube.control_plane import ControlPlane


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (e.g. from a supervisor) should tear down like Ctrl-C does.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Build or reuse the binaries, start the control plane, wait for Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--startup-timeout", type=float, default=120.0, help="seconds to wait for readiness"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    cluster = ControlPlane(bin_dir=build_binaries(), startup_timeout=args.startup_timeout)
    try:
        cluster.start()
        print(f"control plane ready at {cluster.server}")
        print(f"kubeconfig: {cluster.kubeconfig}")
        print(f"logs:       {cluster.workdir}/*.log")
        print()
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        print()
        print("Ctrl-C stops it and deletes the kubeconfig, certificates and data.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping", file=sys.stderr)
        return 0
    except ControlPlaneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
