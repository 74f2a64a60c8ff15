"""`make bench --quick` end to end: every figure is there, beside its reference and their ratio,
the scale-out line (REPLICAS=1 and 2 on a Redis Cluster) among them, and the numbers make sense.
Speed itself is only printed, never asserted: the machine is shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("webhook", "agent", "mcp-bridge", "notifier", "autocoder")
# Figures the reference has an equivalent of: value, reference and ratio are all numbers.
COMPARED = (
    "ack_throughput",
    "ack_p50",
    "ack_p95",
    "ack_p99",
    "e2e_help_p50",
    "e2e_help_p95",
    "end_to_end_burst",
    "cpu_total",
    "cpu_redis",
    "redis_commands",
    *(f"cpu_{name}" for name in SERVICES),
)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """What `make bench BENCH_ARGS=--quick` prints, and the figures it writes."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    print(run.stdout[-8000:])
    assert run.returncode == 0, run.stderr[-4000:]
    assert f"figures in {out}" in run.stdout
    assert "ratio" in run.stdout and "noisy" in run.stdout
    return run.stdout, dict(json.loads(out.read_text()))


@pytest.fixture(scope="module")
def figures(bench_run: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return bench_run[1]


def test_every_figure_has_its_reference_and_ratio(figures: dict[str, Any]) -> None:
    by_key = {f["key"]: f for f in figures["figures"]}
    for key in (
        *COMPARED,
        "e2e_free_text_p50",
        "e2e_free_text_p95",
        "sustained_one_sender",
        "sustained_pool",
        "scale_out_replicas_1",
        "scale_out_replicas_2",
    ):
        assert key in by_key, key
    for figure in figures["figures"]:
        assert {"value", "reference", "ratio", "unit", "noisy", "better"} <= figure.keys()
        if figure["reference"] is None:
            assert figure["reference_note"], f"{figure['key']}: no reference and no word why"
        elif figure["value"] is not None and figure["reference"] > 0:
            assert figure["ratio"] == pytest.approx(
                figure["value"] / figure["reference"], rel=0.01, abs=0.002
            )
    for key in COMPARED:
        figure = by_key[key]
        assert figure["value"] is not None and figure["value"] > 0, figure
        assert figure["reference"] is not None and figure["reference"] > 0, figure
        assert figure["ratio"] is not None and figure["ratio"] > 0, figure
    assert by_key["e2e_free_text_p50"]["value"] > 0
    # The CPU figures are the steady ones; the wall-clock ones say they are noisy.
    assert not by_key["cpu_total"]["noisy"] and by_key["ack_throughput"]["noisy"]


def test_costs_make_sense(figures: dict[str, Any]) -> None:
    phases = figures["phases"]
    ack = phases["ack"]["cost"]
    # Every service that handles a /help spends CPU on it; the stand-in and the load generator
    # are counted apart from the services' sum.
    for name in ("webhook", "agent", "notifier"):
        assert ack["cpu_ms_per_msg"][name] > 0, name
    assert ack["redis_cpu_ms_per_msg"] > 0
    assert ack["cpu_ms_per_msg"]["twilio-stand-in"] > 0
    assert ack["cpu_ms_per_msg"]["load-generator"] > 0
    services = sum(ack["cpu_ms_per_msg"][name] for name in SERVICES)
    assert ack["services_cpu_ms_per_msg"] == pytest.approx(services, abs=0.01)
    assert ack["total_cpu_ms_per_msg"] == pytest.approx(services + ack["redis_cpu_ms_per_msg"], abs=0.01)
    # A free-text message goes through every service, the bridge and AutoCoder included.
    free_text = phases["e2e_free_text"]["cost"]
    for name in SERVICES:
        assert free_text["cpu_ms_per_msg"][name] > 0, name
    assert ack["redis_commands_per_msg"] > 0 and ack["top_redis_commands_per_msg"]
    reference = phases["reference_ack"]["cost"]
    assert reference["cpu_ms_per_msg"]["reference-webhook"] > 0
    # The reference's one round trip: INCR and EXPIRE.
    assert reference["redis_commands_per_msg"] == pytest.approx(2.0, abs=0.05)


def test_every_reply_arrived(figures: dict[str, Any]) -> None:
    phases = figures["phases"]
    options = figures["options"]
    assert phases["ack"]["messages"] == options["messages"]
    assert phases["ack"]["replies"] >= options["messages"]
    assert phases["reference_ack"]["replies_inline"] == options["messages"]
    for name in ("e2e_help", "e2e_free_text"):
        assert phases[name]["latency"]["n"] == options["e2e_messages"], name
    assert phases["e2e_help"]["sample_reply"] and phases["e2e_free_text"]["sample_reply"]
    for name in ("sustained_one_sender", "sustained_pool"):
        tries = phases[name]["tries"]
        assert tries and all(t["messages"] > 0 for t in tries), name


def test_the_scale_out_line_puts_one_and_two_replicas_side_by_side(
    bench_run: tuple[str, dict[str, Any]],
) -> None:
    stdout, figures = bench_run
    options = figures["options"]
    assert options["scale_out"] is True
    by_key = {f["key"]: f for f in figures["figures"]}
    measured = figures["scale_out"]
    runs = {run["replicas"]: run for run in measured["results"]}
    assert sorted(runs) == [1, 2]
    for replicas, run in runs.items():
        # Every message of the run was answered exactly once (scale_out.check_replies), and
        # counted in its figures.
        assert run["messages"] == options["scale_out_messages"], run
        assert run["senders"] == options["scale_out_senders"], run
        assert run["msg_per_s"] > 0 and run["cpu_ms_per_msg_services"] > 0, run
        figure = by_key[f"scale_out_replicas_{replicas}"]
        assert figure["value"] == pytest.approx(measured["median_msg_per_s"][str(replicas)], rel=0.001)
        assert figure["unit"] == "msg/s" and figure["noisy"]
    assert measured["ratio_msg_per_s"] == pytest.approx(runs[2]["msg_per_s"] / runs[1]["msg_per_s"], rel=0.01)
    # The table's two rows, and the one line with both figures and their ratio.
    assert "sustained end to end, Redis Cluster, REPLICAS=1" in stdout
    assert "sustained end to end, Redis Cluster, REPLICAS=2" in stdout
    [line] = [line for line in stdout.splitlines() if line.startswith("scale-out on a Redis Cluster")]
    assert f"REPLICAS=1 {runs[1]['msg_per_s']:.1f} msg/s" in line
    assert f"REPLICAS=2 {runs[2]['msg_per_s']:.1f} msg/s" in line
    assert f"{measured['ratio_msg_per_s']:.2f}x" in line
