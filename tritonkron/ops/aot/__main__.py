"""``python -m tritonkron.ops.aot``: compile every kernel variant a launcher can choose, no GPU.

Examples::

    python -m tritonkron.ops.aot                        # launch tier, sm_80 + sm_90, to cubin
    python -m tritonkron.ops.aot --tiers space --until ttgir --arch 90
    python -m tritonkron.ops.aot --tiers launch,precision --arch 90   # with the TF32/bf16 policies
    python -m tritonkron.ops.aot --json aot.json        # machine-readable outcomes

Prints one row per (kernel, arch) and every failure with the launcher call that chose it; the
exit status is 1 when any variant failed. ``TRITON_INTERPRET`` is ignored (unset for the run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from tritonkron.ops.aot.build import STAGES, Outcome

_TIERS = ("launch", "space", "precision")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tritonkron.ops.aot", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", default="80,90", help="compute capabilities, comma-separated (default 80,90)"
    )
    parser.add_argument(
        "--tiers", default="launch", help=f"comma-separated subset of {_TIERS} (default launch)"
    )
    parser.add_argument("--until", default="cubin", choices=STAGES, help="last compile stage (default cubin)")
    parser.add_argument("--jobs", type=int, default=None, help="compile processes (default: CPU cores)")
    parser.add_argument("--json", default=None, help="write every outcome to this JSON file")
    args = parser.parse_args(argv)
    try:
        args.arch = [int(a) for a in args.arch.split(",") if a]
    except ValueError:
        parser.error(f"--arch must be comma-separated integers such as 80,90; got {args.arch!r}")
    args.tiers = tuple(t for t in args.tiers.split(",") if t)
    bad = [t for t in args.tiers if t not in _TIERS]
    if bad or not args.tiers:
        parser.error(
            f"--tiers must be a comma-separated subset of {', '.join(_TIERS)}; got {bad or args.tiers}"
        )
    return args


def _summary(outcomes: list[Outcome]) -> list[dict[str, object]]:
    """One row per (kernel, arch): variants, failures, largest shared memory, seconds."""
    rows: dict[tuple[str, int], dict[str, object]] = {}
    for o in outcomes:
        row = rows.setdefault(
            (o.variant.short_name, o.arch),
            {"kernel": o.variant.short_name, "arch": f"sm_{o.arch}", "variants": 0, "failed": 0,
             "max shared B": 0, "seconds": 0.0},
        )  # fmt: skip
        row["variants"] += 1
        row["failed"] += 0 if o.ok else 1
        row["max shared B"] = max(row["max shared B"], o.shared or 0)
        row["seconds"] = round(row["seconds"] + o.seconds, 1)
    return list(rows.values())


def _record(o: Outcome) -> dict[str, object]:
    v = o.variant
    return {"kernel": v.kernel, "arch": o.arch, "until": o.until, "ok": o.ok, "error": o.error,
            "shared": o.shared, "seconds": round(o.seconds, 3), "num_warps": v.num_warps,
            "num_stages": v.num_stages, "constexprs": {k: repr(c) for k, c in v.constexprs},
            "signature": dict(v.signature), "origin": v.origin}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Record, compile, report; returns the exit status."""
    args = _parse(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from tabulate import tabulate

    from tritonkron.ops.aot.build import compile_all
    from tritonkron.ops.aot.catalog import collect
    from tritonkron.ops.aot.record import jit_kernels

    start = time.perf_counter()
    variants = collect(args.tiers)
    outcomes = compile_all(variants, args.arch, args.until, args.jobs)
    wall = time.perf_counter() - start
    failed = [o for o in outcomes if not o.ok]
    print(f"triton {triton.__version__}: {len(variants)} variants ({', '.join(args.tiers)}) × "
          f"sm_{', sm_'.join(map(str, args.arch))} to {args.until}: {len(outcomes) - len(failed)} compiled, "
          f"{len(failed)} failed, {wall:.0f} s")  # fmt: skip
    print(tabulate(_summary(outcomes), headers="keys", tablefmt="github"))
    missing = sorted(set(jit_kernels()) - {v.kernel for v in variants})
    if missing:
        print(f"kernels never launched by the catalog: {missing}")
    for o in failed:
        print(f"\nFAILED sm_{o.arch} {o.variant.describe()}\n  chosen by: {o.variant.origin}\n  {o.error}")
    if args.json:
        payload = {"triton": triton.__version__, "tiers": list(args.tiers), "archs": args.arch,
                   "until": args.until, "variants": len(variants), "kernels": sorted(jit_kernels()),
                   "missing": missing, "seconds": round(wall, 1), "outcomes": [_record(o) for o in outcomes]}  # fmt: skip
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=1)
    return 1 if failed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
