"""Print a build's per-op table (precision, reason for any f32 op) and its summary line."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("build_dir", help="build directory (holds model.json)")
    p.add_argument("--json", action="store_true", help="print model.json's op table as JSON")


def run(args) -> int:
    import json

    from ..artifact import read_meta
    from ..report import format_table

    meta = read_meta(args.build_dir)
    if args.json:
        print(json.dumps({"ops": meta.get("ops"), "summary": meta.get("precision_summary")},
                         indent=2))
        return 0
    t = meta.get("target", {})
    print(f"{args.build_dir}: target {t.get('name')}, inputs "
          f"{[(i['name'], i['shape'], i['dtype']) for i in meta['inputs']]}")
    print(format_table(meta))
    return 0
