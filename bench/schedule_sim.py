"""The poll schedulers alone, in simulated time: `.venv/bin/python bench/schedule_sim.py`.

A quick companion to `bench/poller.py --budget`, which runs the real bot (about 12 minutes
a seed): the same mix and budget with no process, no HTTP and no clock, so a change to
bot/schedule.py can be judged over several seeds in a few minutes. It is the simulation
tests/test_schedule.py checks the policy with (`simulate`: the poller's own rules, the real
`PollPolicy`), run in the steady state: purchases at the rate that keeps `--waiting`
orders waiting (bench/poller.py's `Mix`), every order open 20 minutes, SMS_POLL_INTERVAL 3 s,
SMSMAN_MAX_RPS 20 (purchases and closes take calls too), the model warmed with 2,000 orders
of the mix. Codes that come after `--warmup` seconds count; delay = code available to the
poll that finds it (SMS-Man's latency and the delivery, the same for both, left out).
`--set NAME=VALUE` overrides a bot/schedule.py constant, to try a variant.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import percentile
from bench.poller import LIFETIME, Mix
from bot import schedule
from tests.test_schedule import make_policy, simulate, warm_model

MAX_RPS = 20.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--warmup", type=float, default=1500.0)
    parser.add_argument("--window", type=float, default=600.0)
    parser.add_argument("--set", metavar="NAME=VALUE", action="append", default=[])
    args = parser.parse_args()
    for assignment in args.set:
        name, value = assignment.split("=", 1)
        if not hasattr(schedule, name):
            parser.error(f"bot/schedule.py has no {name}")
        setattr(schedule, name, float(value))
    rate = Mix().rate_for(args.waiting, LIFETIME)
    for seed in args.seeds:
        means, p99s = [], []
        for name in ("fixed", "learned"):
            model = warm_model(random.Random(seed + 1000), 2000)
            outcome = simulate(
                policy=make_policy(MAX_RPS, model) if name == "learned" else None,
                budget=MAX_RPS,
                rate=rate,
                seconds=args.warmup + args.window,
                warmup=args.warmup,
                seed=seed,
            )
            delays = outcome.delays
            means.append(sum(delays) / len(delays))
            p99s.append(percentile(delays, 99))
            print(
                f"seed {seed} {name:<8} codes={len(delays):>4} waiting<={outcome.waiting_max}"
                f" mean={means[-1]:5.1f}s p90={percentile(delays, 90):5.1f}s"
                f" p99={p99s[-1]:5.1f}s max={max(delays):5.1f}s"
                f" closed late<={max(outcome.closed_late, default=0):5.1f}s",
                flush=True,
            )
        mean, p99 = means[1] / means[0], p99s[1] / p99s[0]
        print(f"seed {seed} learned/fixed: mean x{mean:.2f}, p99 x{p99:.2f}", flush=True)


if __name__ == "__main__":
    main()
