"""``python -m glimpse.encoder [--host H] [--port P]``: the encoder as deployed (main.serve)."""

from __future__ import annotations

import argparse

from glimpse.encoder.main import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glimpse.encoder", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    serve(host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
