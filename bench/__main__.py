"""`make bench` (`python -m bench`): the platform side by side with a minimal inline webhook.

    python -m bench [--quick] [--concurrency C] [--messages N] [--senders S] [--json PATH] ...
    python -m bench scale-out [--messages M] [--senders N] [--concurrency C] [--rounds R]

The first prints the table of bench/run.py (every figure with its ratio to
bench/reference_webhook.py) and writes it as JSON to .run/bench/latest.json (or --json PATH);
the second is the scale-out line (1 vs 2 replicas on a Redis Cluster, bench/scale_out.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import run


def pool_env(value: str) -> tuple[str, str]:
    name, sep, setting = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {value!r}")
    return name, setting


def parse(argv: list[str]) -> run.Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=run.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = run.Options()
    parser.add_argument("--quick", action="store_true", help="a smoke run (well under a minute)")
    parser.add_argument("--concurrency", type=int, help=f"ack load's connections ({defaults.concurrency})")
    parser.add_argument("--messages", type=int, help=f"messages of the ack burst ({defaults.messages})")
    parser.add_argument("--senders", type=int, help=f"whitelisted senders of the loads ({defaults.senders})")
    parser.add_argument("--e2e-messages", type=int, help=f"per end-to-end figure ({defaults.e2e_messages})")
    parser.add_argument("--sustain-seconds", type=float, help=f"each sustained try ({defaults.sustain_s:g})")
    parser.add_argument("--pool-senders", type=int, help=f"the Messaging Service's ({defaults.pool_senders})")
    parser.add_argument(
        "--pool-env",
        type=pool_env,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more environment for the Messaging Service stack (e.g. how the notifier learns the pool)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the webhook, agent and notifier during the ack burst"
    )
    parser.add_argument("--log-level", help="LOG_LEVEL of the services (default: theirs, as make run)")
    parser.add_argument("--json", type=Path, help="write the figures here (default: .run/bench/latest.json)")
    args = parser.parse_args(argv)
    given = {
        "concurrency": args.concurrency,
        "messages": args.messages,
        "senders": args.senders,
        "e2e_messages": args.e2e_messages,
        "sustain_s": args.sustain_seconds,
        "pool_senders": args.pool_senders,
        "log_level": args.log_level,
        "json_path": args.json,
        "profile": args.profile or None,
    }
    chosen = {k: v for k, v in given.items() if v is not None}
    chosen["pool_env"] = tuple(args.pool_env)
    options = run.Options.quick_run(**chosen) if args.quick else run.Options(**chosen)
    if options.concurrency < 1 or options.messages < 20 or options.senders < 1 or options.e2e_messages < 2:
        parser.error(
            "--concurrency and --senders at least 1, --messages at least 20, --e2e-messages at least 2"
        )
    return options


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["scale-out"]:
        from bench import scale_out

        scale_out.main(argv[1:])
        return
    run.main(parse(argv))


if __name__ == "__main__":
    main()
