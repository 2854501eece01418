#!/usr/bin/env python3
"""Import every dump of the messy-dump corpus and check the result (run by ctest).

usage: check_corpus.py MOESCHED_TRACE MOESCHED_SIM OUT_DIR

1. make_corpus.py writes the corpus twice: the two must be byte-identical (deterministic).
2. Every dump has an expected report corpus/NAME.expected and every expected report a dump.
3. `moesched-trace import NAME -o NAME.trace.safetensors ARGS --json ...` (ARGS: the expected
   file's "# args:" line) exits 0 and prints exactly the expected lines ("<N>" in an expected
   line stands for a number that may differ between zlib versions); the JSON report lists the
   same notes and dropped records.
4. A dump with damage (dropped tokens or a cut-short end) is refused under --incomplete error,
   with an error naming the file.
5. `moesched-trace validate` accepts the trace; `moesched-sim run` replays it.
Python 3 standard library only.
"""
import filecmp
import json
import os
import re
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd, cwd):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def line_matches(expected, got):
    pattern = "".join("[0-9]+" if part == "<N>" else re.escape(part) for part in re.split(r"(<N>)", expected))
    return re.fullmatch(pattern, got) is not None


def check(name, trace, sim, work):
    with open(os.path.join(HERE, "corpus", name + ".expected"), encoding="utf-8") as f:
        text = f.read().splitlines()
    if not text or not text[0].startswith("# args:"):
        return [f"{name}.expected: the first line must be '# args: ...'"]
    args = shlex.split(text[0][len("# args:"):])
    expected = text[1:]
    base = name.replace(".", "_")
    out, report = base + ".trace.safetensors", base + ".report.json"
    r = run([trace, "import", name, "-o", out, *args, "--json", report], work)
    if r.returncode != 0:
        return [f"import exited {r.returncode}: {r.stderr.strip()}"]
    got = r.stdout.splitlines()
    errors = []
    if len(got) != len(expected) or not all(line_matches(e, g) for e, g in zip(expected, got)):
        diff = [f"  expected: {e}\n  got:      {g}" for e, g in zip(expected + [""] * len(got), got + [""] * len(expected))
                if (e or g) and not line_matches(e, g)]
        errors.append("the report differs from corpus/" + name + ".expected:\n" + "\n".join(diff))
    with open(os.path.join(work, report), encoding="utf-8") as f:
        j = json.load(f)
    notes = [g[len("  note: "):] for g in got if g.startswith("  note: ")]
    dropped = [g[len("  dropped: "):] for g in got if g.startswith("  dropped: ")]
    if j["notes"] != notes or [d["text"] for d in j["dropped"]] != dropped:
        errors.append("the --json report's notes or dropped records differ from the printed ones")
    if j["dropped_records"] != sum(d["records"] for d in j["dropped"]):
        errors.append("dropped_records is not the sum of the dropped entries")
    damaged = any("draft" not in d["reason"] for d in j["dropped"])
    if damaged:
        s = run([trace, "import", name, "-o", base + ".strict.trace.safetensors", *args, "--incomplete", "error"], work)
        if s.returncode != 2 or name not in s.stderr:
            errors.append(f"--incomplete error: exit {s.returncode}, expected 2 with an error naming the file: {s.stderr.strip()}")
    v = run([trace, "validate", out], work)
    if v.returncode != 0 or ": ok (" not in v.stdout:
        errors.append(f"validate: exit {v.returncode}: {v.stdout.strip()}")
    p = run([sim, "run", "--trace", out, "--cache-gb", "0.2"], work)
    if p.returncode != 0 or "TPOT ms" not in p.stdout:
        errors.append(f"moesched-sim run: exit {p.returncode}: {p.stderr.strip()}")
    return errors


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    trace, sim, out = (os.path.abspath(a) for a in sys.argv[1:4])
    work, again = os.path.join(out, "a"), os.path.join(out, "b")
    for d in (work, again):
        if os.path.isdir(d):
            for n in os.listdir(d):
                os.remove(os.path.join(d, n))
        r = run([sys.executable, os.path.join(HERE, "make_corpus.py"), d], HERE)
        if r.returncode != 0:
            sys.exit(f"make_corpus.py failed: {r.stderr}")
    with open(os.path.join(work, "MANIFEST"), encoding="utf-8") as f:
        names = f.read().split()
    failed = []
    _, mismatch, missing = filecmp.cmpfiles(work, again, names + ["MANIFEST"], shallow=False)
    if mismatch or missing:
        failed.append(("make_corpus.py", [f"two runs differ: {mismatch + missing}"]))
    expected = sorted(n[: -len(".expected")] for n in os.listdir(os.path.join(HERE, "corpus")) if n.endswith(".expected"))
    if expected != sorted(names):
        failed.append(("corpus", [f"dumps without an expected report: {sorted(set(names) - set(expected))}; "
                                  f"expected reports without a dump: {sorted(set(expected) - set(names))}"]))
    passed = 0
    for name in names:
        errors = check(name, trace, sim, work)
        if errors:
            failed.append((name, errors))
            print(f"FAIL {name}")
        else:
            passed += 1
            print(f"ok   {name}")
    for name, errors in failed:
        print(f"\n{name}:\n" + "\n".join(errors))
    print(f"{passed} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
