"""List the targets described in targets/*.toml and which of them this CPU can run."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print the full descriptions as JSON")


def run(args) -> int:
    import json

    from .. import targets
    from ..errors import TargetError

    specs = targets.all_targets()
    if args.json:
        print(json.dumps({n: s.to_dict() for n, s in specs.items()}, indent=2))
        return 0
    try:
        host = targets.detect_host().name
    except TargetError:
        host = None
    print(f"{'target':12s} {'runs here':9s} {'int8 dot product':16s} {'vector':6s} description")
    for name, s in sorted(specs.items(), key=lambda kv: -kv[1].host_priority):
        here = "yes" if s.runnable_here() else ("-" if s.family != "x86" else "no")
        mark = " (host)" if name == host else ""
        print(f"{name:12s} {here:9s} {s.int8.dot_product:16s} {s.vector_bits:6d} "
              f"{s.description}{mark}")
    missing = {n: s.missing_flags() for n, s in specs.items() if s.family == "x86"
               and s.missing_flags()}
    for n, m in missing.items():
        print(f"  {n}: this CPU lacks {', '.join(m)} (build with --cross)")
    return 0
