"""ClassBench tools (run from the repository root with the repository's .venv python):

``python -m bench.classbench policy SET [-o FILE]``
    a set as a fwd policy file: JSON when FILE ends in ``.json``, else YAML
    (``fwd policy apply FILE`` takes either); the translation summary (rules split
    into tcp + udp, rules left out) goes to stderr.
``python -m bench.classbench gen FAMILY SIZE [--seed N] [--out DIR]``
    a generated acl / fw / ipc set of SIZE rules and its trace, as ClassBench
    files in DIR, and its statistics beside its seed's.
``python -m bench.classbench stats SET...``
    the statistics of sets side by side.

SET is a shared set (``fw1_1k``), a generated one (``fw_10k``: drawn with seed 1
and cached in /tmp/fwd-classbench) or a ``.rules`` path.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root

from bench.classbench import rules, sets, stats  # noqa: E402


def _rules(name: str, seed: int) -> tuple[str, list[rules.CbRule]]:
    if name.endswith(".rules") or "/" in name:
        return Path(name).stem, rules.load_rules(name)
    return name, sets.load(name, seed).rules


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.classbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pol = sub.add_parser("policy", help="translate a ClassBench set into a fwd policy file")
    pol.add_argument("set", help="shared set name (fw1_1k), generated (fw_10k) or a .rules file")
    pol.add_argument("-o", "--output", help="policy file to write (.json or .yaml; default stdout)")
    pol.add_argument("--all-drop", action="store_true",
                     help="every rule drops (default: odd rule numbers drop, even allow)")
    g = sub.add_parser("gen", help="generate a ClassBench-like set and its trace")
    g.add_argument("family", choices=sorted(sets.FAMILIES))
    g.add_argument("size", type=sets.size_of, help="rules (10000 or 10k)")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--out", type=Path, default=sets.CACHE, help=f"directory (default {sets.CACHE})")
    st = sub.add_parser("stats", help="statistics of sets, side by side")
    st.add_argument("sets", nargs="+")
    for sp in (pol, st):
        sp.add_argument("--seed", type=int, default=1, help="seed of generated sets (default 1)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "gen":
            rp, tp = sets.generated(args.family, args.size, args.seed, args.out)
            seed_set = sets.FAMILIES[args.family]
            print(f"{rp}\n{tp}\n")
            print(stats.table([stats.set_stats(f"{seed_set} (seed)", rules.load_rules(seed_set)),
                               stats.set_stats(rp.stem, rules.load_rules(rp))]))
            return 0
        if args.cmd == "stats":
            print(stats.table([stats.set_stats(*_rules(n, args.seed)) for n in args.sets]))
            return 0
        name, cb = _rules(args.set, args.seed)
        t = rules.translate(cb, name, actions=rules.all_drop if args.all_drop else rules.alternate)
    except (OSError, ValueError) as e:
        print(f"classbench: {e}", file=sys.stderr)
        return 1
    print(t.summary(), file=sys.stderr)
    t.policy()  # validated by fwd's model before anything is written
    if args.output and args.output.endswith(".json"):
        text = json.dumps(t.raw, indent=1)
    else:
        import yaml

        text = yaml.safe_dump(t.raw, sort_keys=False)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
