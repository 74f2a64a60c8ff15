"""`make bench` (`python -m bench`): the platform side by side with a minimal inline webhook.

    python -m bench [--quick] [--no-scale-out] [--concurrency C] [--messages N] [--json PATH] ...
    python -m bench scale-out [--messages M] [--senders N] [--concurrency C] [--rounds R]

The first prints the table of bench/run.py (every figure with its ratio to
bench/reference_webhook.py), the scale-out line among them (1 vs 2 replicas on a Redis Cluster,
bench/scale_out.py, measured last; --no-scale-out skips it), and writes it as JSON to
.run/bench/latest.json (or --json PATH); the second runs the scale-out line alone.
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
    parser.add_argument(
        "--no-scale-out",
        action="store_true",
        help="skip the scale-out line (REPLICAS=1 and 2 on a Redis Cluster: the longest part of the run)",
    )
    parser.add_argument(
        "--scale-out-messages", type=int, help=f"of each scale-out run ({defaults.scale_out_messages})"
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
        "scale_out": False if args.no_scale_out else None,
        "scale_out_messages": args.scale_out_messages,
    }
    chosen = {k: v for k, v in given.items() if v is not None}
    chosen["pool_env"] = tuple(args.pool_env)
    options = run.Options.quick_run(**chosen) if args.quick else run.Options(**chosen)
    if options.concurrency < 1 or options.messages < 20 or options.senders < 1 or options.e2e_messages < 2:
        parser.error(
            "--concurrency and --senders at least 1, --messages at least 20, --e2e-messages at least 2"
        )
    if options.scale_out_messages < options.scale_out_senders:
        parser.error(f"--scale-out-messages at least {options.scale_out_senders} (one per sender)")
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
