"""Print a build's per-op table (precision, the dtypes each op reads and writes, the reason
for any f32 op) and its OpenVINO-style summary line ("N of M compute ops in INT8; f32: [...]")."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("build_dir", help="build directory (holds model.json)")
    p.add_argument("--json", action="store_true", help="print model.json's op table as JSON")
    p.add_argument("--not-int8", action="store_true",
                   help="list only the ops that are not int8 (f32 and fused)")


def run(args) -> int:
    import json

    from ..artifact import read_meta
    from ..report import format_table, int8_kernels_line

    meta = read_meta(args.build_dir, check_cpu=False)
    ops = meta.get("ops") or []
    if args.not_int8:
        ops = [r for r in ops if r.get("precision") != "int8"]
    if args.json:
        print(json.dumps({"ops": ops, "summary": meta.get("precision_summary"),
                          "notes": meta.get("notes"),
                          "int8_kernels": meta.get("int8_kernels"),
                          "fallbacks": meta.get("fallbacks", [])}, indent=2))
        return 0
    t = meta.get("target", {})
    print(f"{args.build_dir}: target {t.get('name')}, inputs "
          f"{[(i['name'], i['shape'], i['dtype']) for i in meta['inputs']]}")
    kernels = int8_kernels_line(meta.get("int8_kernels"))
    if kernels:
        print(kernels)
    fallbacks = meta.get("fallbacks") or []
    print(f"fallbacks: {len(fallbacks)}" + (" (where the build did less than its best)"
                                            if fallbacks else ""))
    for f in fallbacks:
        nodes = f" [nodes {', '.join(f['nodes'])}]" if f.get("nodes") else ""
        print(f"  {f['kernel']}{nodes}: {f['stage']} did not apply -> {f['instead']} "
              f"({f['reason']})")
    print(format_table({**meta, "ops": ops}))  # ends with the summary line
    return 0
