#!/usr/bin/env python3
"""Compare two fsbench.sh targets side by side, with ratios.

Usage: bench-table.py --ours LABEL [--base LABEL] results.jsonl [more.jsonl ...]

Reads the JSON lines fsbench.sh prints (one object per test, plus a summary object that is
skipped) and prints a markdown table: one row per metric, every value seen per label in file
order (so repeated rounds show side by side), and the ratio of the medians, ours / base.
Throughput metrics are better when higher, latencies when lower; the last column says
whether ours is at or above the base on that line, which is the target the benchmark checks.
Without --base, only the figures of LABEL are printed.
../shared/bench/fsbench-table.py prints the same figures one row per target, without ratios.
"""
import json
import statistics
import sys

# (test, key, row title, higher_is_better)
METRICS = [
    ("seqwrite", "MiB_s", "seq write MiB/s", True),
    ("seqread", "MiB_s", "seq read MiB/s", True),
    ("randwrite", "iops", "4k randwrite IOPS", True),
    ("randwrite", "p99_us", "randwrite p99 µs", False),
    ("randread", "iops", "4k randread IOPS", True),
    ("randread", "p99_us", "randread p99 µs", False),
    ("smallfile", "create_files_s", "create files/s", True),
    ("smallfile", "stat_files_s", "stat files/s", True),
    ("smallfile", "read_files_s", "read files/s", True),
    ("smallfile", "delete_files_s", "delete files/s", True),
    ("fsync", "ops_s", "write+fsync ops/s", True),
    ("fsync", "fsync_p99_us", "fsync p99 µs", False),
]


def fmt(v):
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}"


def parse_args(argv):
    ours = base = None
    files = []
    it = iter(argv)
    for a in it:
        if a in ("--ours", "--base"):
            try:
                value = next(it)
            except StopIteration:
                sys.exit(f"bench-table.py: {a} needs a label")
            if a == "--ours":
                ours = value
            else:
                base = value
        elif a in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        elif a.startswith("-"):
            sys.exit(f"bench-table.py: unknown option {a}")
        else:
            files.append(a)
    if not ours or not files:
        sys.exit("usage: bench-table.py --ours LABEL [--base LABEL] results.jsonl [...]")
    return ours, base, files


def load(files):
    """(label, test, key) -> list of values, in file order."""
    vals = {}
    for path in files:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"bench-table.py: {path}:{n}: not JSON ({e})")
                if "test" not in r:
                    continue  # the per-run summary line repeats the figures
                for test, key, _, _ in METRICS:
                    if r["test"] == test and isinstance(r.get(key), (int, float)):
                        vals.setdefault((r["label"], test, key), []).append(float(r[key]))
    return vals


def main(argv):
    ours, base, files = parse_args(argv)
    vals = load(files)
    if base is None:
        print(f"| metric | {ours} |")
        print("|---|---:|")
        for test, key, title, _ in METRICS:
            o = vals.get((ours, test, key), [])
            if o:
                print(f"| {title} | {' / '.join(fmt(v) for v in o)} |")
        return
    print(f"| metric | {ours} | {base} | ratio {ours}/{base} (medians) | at or above {base}? |")
    print("|---|---:|---:|---:|:---:|")
    verdicts = []
    for test, key, title, higher in METRICS:
        o = vals.get((ours, test, key), [])
        b = vals.get((base, test, key), [])
        if not o and not b:
            continue
        cell_o = " / ".join(fmt(v) for v in o) or "-"
        cell_b = " / ".join(fmt(v) for v in b) or "-"
        ratio = verdict = "-"
        if o and b:
            mo, mb = statistics.median(o), statistics.median(b)
            if mb > 0:
                r = mo / mb
                ratio = f"{r:.2f}" if r >= 0.1 else f"{r:.3g}"
            ok = mo >= mb if higher else mo <= mb
            verdict = "yes" if ok else "NO"
            verdicts.append(ok)
        print(f"| {title} | {cell_o} | {cell_b} | {ratio} | {verdict} |")
    if verdicts:
        print()
        print(f"{ours} at or above {base} on {sum(verdicts)} of {len(verdicts)} lines "
              "(latency lines: lower is better; ratios of medians over rounds).")


if __name__ == "__main__":
    main(sys.argv[1:])
