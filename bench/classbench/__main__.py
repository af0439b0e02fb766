"""``python -m bench.classbench policy SET [-o FILE]``: a ClassBench set as a fwd policy file.

SET is a shared set's name (``fw1_1k``) or a ``.rules`` path. The file is JSON
when FILE ends in ``.json``, else YAML; ``fwd policy apply FILE`` takes either.
The translation summary (rules split into tcp + udp, rules left out) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root

from bench.classbench import rules  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.classbench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pol = sub.add_parser("policy", help="translate a ClassBench set into a fwd policy file")
    pol.add_argument("set", help="shared set name (fw1_1k) or a .rules file")
    pol.add_argument("-o", "--output", help="policy file to write (.json or .yaml; default stdout)")
    pol.add_argument("--all-drop", action="store_true",
                     help="every rule drops (default: odd rule numbers drop, even allow)")
    args = p.parse_args(argv)
    try:
        name = Path(args.set).stem
        t = rules.translate(rules.load_rules(args.set), name,
                            actions=rules.all_drop if args.all_drop else rules.alternate)
    except (OSError, rules.ClassBenchError) as e:
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
