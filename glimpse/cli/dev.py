"""Run Glimpse locally without Docker: index (8002), encoder (8001) and gateway (8000).

    glimpse dev                 # all three; Ctrl-C stops them all
    glimpse dev --tiny          # the tiny random-weight model (offline, dim 64)
    glimpse dev --only gateway  # just one (the others running elsewhere)

Data goes under ./data (index/, media/, models/). Each line of output is prefixed with its
service's name. While it runs, type a service name (or 'all') and Enter to restart it alone;
a service that exits is reported and can be restarted the same way.
Environment variables you set (ENCODER_*, INDEX_*, GATEWAY_*) win over these defaults.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SERVICES = {
    "index": ("glimpse.index.main", 8002),
    "encoder": ("glimpse.encoder.main", 8001),
    "gateway": ("glimpse.gateway.main", 8000),
}
COLOURS = {"index": "\033[35m", "encoder": "\033[36m", "gateway": "\033[33m"}
RESET = "\033[0m"


def service_env(args: argparse.Namespace) -> dict[str, str]:
    data = Path(args.data).resolve()
    defaults = {
        "INDEX_DATA_DIR": str(data / "index"),
        "GATEWAY_MEDIA_DIR": str(data / "media"),
        "ENCODER_CACHE_DIR": str(data / "models"),
        "GATEWAY_ENCODER_URL": f"http://{args.host}:{SERVICES['encoder'][1]}",
        "GATEWAY_INDEX_URL": f"http://{args.host}:{SERVICES['index'][1]}",
        "PYTHONUNBUFFERED": "1",
    }
    if args.tiny:
        defaults.update(ENCODER_MODEL="glimpse-tiny", ENCODER_PRETRAINED="none", INDEX_DIM="64")
        # The tiny model's index must not share a folder with a real model's (other dim).
        defaults["INDEX_DATA_DIR"] = str(data / "index-tiny")
        defaults["GATEWAY_MEDIA_DIR"] = str(data / "media-tiny")
    return {**defaults, **os.environ}


class Runner:
    """The child processes, their prefixed output, restart and shutdown."""

    def __init__(self, names: list[str], env: dict[str, str], host: str) -> None:
        self.names = names
        self.env = env
        self.host = host
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.lock = threading.Lock()
        self.colour = sys.stdout.isatty()

    def say(self, name: str, line: str) -> None:
        prefix = f"{name:>7} | "
        if self.colour:
            prefix = f"{COLOURS.get(name, '')}{prefix}{RESET}"
        with self.lock:
            sys.stdout.write(prefix + line.rstrip("\n") + "\n")
            sys.stdout.flush()

    def start(self, name: str) -> None:
        module, port = SERVICES[name]
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", f"{module}:app",
             "--host", self.host, "--port", str(port)],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own process group: Ctrl-C in this terminal reaches us, and we stop it in order.
            start_new_session=True,
        )
        self.procs[name] = proc
        self.say(name, f"started pid {proc.pid} on http://{self.host}:{port}")
        threading.Thread(target=self._pump, args=(name, proc), daemon=True).start()

    def _pump(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.say(name, raw.decode(errors="replace"))
        code = proc.wait()
        if not self.stopping and self.procs.get(name) is proc:
            self.say(name, f"exited with {code}; type '{name}' and Enter to start it again")

    def stop(self, name: str, timeout: float = 10.0) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.say(name, "stopped")

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def stop_all(self) -> None:
        self.stopping = True
        # The gateway first, so it does not report its upstreams vanishing.
        for name in ("gateway", "encoder", "index"):
            if name in self.procs:
                self.stop(name)

    def read_commands(self) -> None:
        for line in sys.stdin:
            word = line.strip()
            targets = self.names if word == "all" else [word] if word in self.names else []
            if not word:
                continue
            if not targets:
                self.say("dev", f"unknown service {word!r}; one of {', '.join(self.names)}, all")
            for name in targets:
                self.restart(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glimpse dev", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", action="append", choices=list(SERVICES), help="run only this service (repeat)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny random-weight model, dim 64")
    parser.add_argument("--data", default=str(Path.cwd() / "data"), help="data folder (./data)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    args = parser.parse_args(argv)

    names = args.only or ["index", "encoder", "gateway"]

    def on_sigterm(*_: object) -> None:
        raise KeyboardInterrupt  # stop the children the same way Ctrl-C does

    signal.signal(signal.SIGTERM, on_sigterm)
    runner = Runner(names, service_env(args), args.host)
    for name in names:
        runner.start(name)
    if sys.stdin.isatty():
        threading.Thread(target=runner.read_commands, daemon=True).start()
        runner.say("dev", "type a service name (or 'all') and Enter to restart it; Ctrl-C stops")
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        runner.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
