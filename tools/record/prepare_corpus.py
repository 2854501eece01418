#!/usr/bin/env python3
"""Build the training corpus of the project's draft/target pair from two Debian packages.

    python3 tools/record/prepare_corpus.py --debs DIR -o tools/record/corpus

DIR holds the two .deb files (prepare_corpus.sh downloads them with `apt-get download`):

  prose: bible-kjv-text  (King James Bible, 1611, public domain), read through the `bible`
         program of the bible-kjv package (the .deb stores the text in that program's own
         compressed format). One document per chapter, verse numbers removed, verses joined.
  code:  libpython3.11-stdlib  (Python standard-library source, PSF licence). One document per
         .py file, except pydoc_data/topics.py (documentation text) and _sysconfigdata*.py
         (a generated dictionary).

Each document goes to the held-out split when the first byte of sha256(domain + ":" + id) is
below 26 (about 10%), so the split is fixed by the names alone. Writes prose.jsonl.xz and
code.jsonl.xz (one {"id", "split", "text"} object per line, sorted by id) and manifest.json
(package names, versions, sha256 of each .deb, document and character counts per split).
Standard library only.
"""

import argparse
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile

HELDOUT_BELOW = 26  # of 256: about 10% of documents are held out


def fail(msg):
    print(f"prepare_corpus: error: {msg}", file=sys.stderr)
    sys.exit(2)


def split_of(domain, doc_id):
    h = hashlib.sha256(f"{domain}:{doc_id}".encode()).digest()
    return "heldout" if h[0] < HELDOUT_BELOW else "train"


def find_deb(debs, package):
    hits = sorted(f for f in os.listdir(debs) if f.startswith(package + "_") and f.endswith(".deb"))
    if len(hits) != 1:
        fail(f"{debs}: expected exactly one {package}_*.deb, found {hits or 'none'}")
    return os.path.join(debs, hits[0])


def deb_info(path):
    out = subprocess.run(["dpkg-deb", "-f", path, "Package", "Version"], check=True,
                         capture_output=True, text=True).stdout
    fields = dict(line.split(": ", 1) for line in out.strip().splitlines())
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {"package": fields["Package"], "version": fields["Version"], "file": os.path.basename(path),
            "sha256": digest}


def prose_documents(deb, workdir):
    """Chapters of the KJV as plain paragraphs, read with `bible -p DIR` from the unpacked .deb."""
    root = os.path.join(workdir, "kjv")
    subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    datadir = os.path.join(root, "usr", "lib")
    if not os.path.exists(os.path.join(datadir, "bible.data")):
        fail(f"{deb}: no usr/lib/bible.data inside")
    if shutil.which("bible") is None:
        fail("the `bible` program (Debian package bible-kjv) is needed to read bible.data: apt-get install bible-kjv")
    text = subprocess.run(["bible", "-p", datadir, "-l100000", "Gen1:1-Rev22:21"], check=True,
                          capture_output=True, text=True).stdout
    docs, title, verses = [], None, []
    verse = re.compile(r"^\s+(\d+) (.*)$")
    for line in text.splitlines():
        if not line.strip():
            continue
        m = verse.match(line)
        if m:
            if title is None:
                fail(f"bible output: verse before any chapter title: {line[:60]!r}")
            verses.append(m.group(2).strip())
        else:
            if title is not None:
                docs.append((title, title + "\n\n" + " ".join(verses) + "\n"))
            title, verses = line.strip(), []
    if title is not None:
        docs.append((title, title + "\n\n" + " ".join(verses) + "\n"))
    if len(docs) != 1189:
        fail(f"bible output: expected 1189 chapters, got {len(docs)}")
    return docs


def code_documents(deb, workdir):
    root = os.path.join(workdir, "stdlib")
    subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    base = os.path.join(root, "usr", "lib")
    libs = [d for d in os.listdir(base) if re.fullmatch(r"python3\.\d+", d)]
    if len(libs) != 1:
        fail(f"{deb}: expected one usr/lib/python3.N inside, found {libs}")
    lib = os.path.join(base, libs[0])
    docs = []
    for dirpath, dirnames, filenames in os.walk(lib):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), lib)
            if rel.startswith(("pydoc_data/", "test/")) or name.startswith("_sysconfigdata"):
                continue
            with open(os.path.join(dirpath, name), encoding="utf-8", errors="strict") as f:
                docs.append((rel, f.read()))
    if len(docs) < 100:
        fail(f"{deb}: only {len(docs)} Python files found")
    return docs


def write_domain(out, domain, docs):
    docs = sorted(docs)
    stats = {"train": [0, 0], "heldout": [0, 0]}
    path = os.path.join(out, f"{domain}.jsonl.xz")
    with lzma.open(path + ".tmp", "wt", encoding="utf-8", preset=9) as f:
        for doc_id, text in docs:
            sp = split_of(domain, doc_id)
            stats[sp][0] += 1
            stats[sp][1] += len(text)
            f.write(json.dumps({"id": doc_id, "split": sp, "text": text}, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)
    return {sp: {"documents": n, "characters": c} for sp, (n, c) in stats.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debs", required=True, help="folder with bible-kjv-text_*.deb and libpython3.*-stdlib_*.deb")
    ap.add_argument("-o", "--out", required=True, help="output folder (created)")
    args = ap.parse_args()
    if not os.path.isdir(args.debs):
        fail(f"--debs {args.debs}: not a folder")
    kjv = find_deb(args.debs, "bible-kjv-text")
    stdlib_hits = sorted(f for f in os.listdir(args.debs) if re.fullmatch(r"libpython3\.\d+-stdlib_.*\.deb", f))
    if len(stdlib_hits) != 1:
        fail(f"{args.debs}: expected exactly one libpython3.N-stdlib_*.deb, found {stdlib_hits or 'none'}")
    stdlib = os.path.join(args.debs, stdlib_hits[0])
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        prose = prose_documents(kjv, work)
        code = code_documents(stdlib, work)
    manifest = {
        "made_by": "tools/record/prepare_corpus.py",
        "heldout_rule": f"sha256(domain + ':' + id)[0] < {HELDOUT_BELOW}",
        "domains": {
            "prose": {"source": deb_info(kjv), "document": "one chapter, verse numbers removed",
                      "splits": write_domain(args.out, "prose", prose)},
            "code": {"source": deb_info(stdlib), "document": "one .py file of the standard library",
                     "splits": write_domain(args.out, "code", code)},
        },
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
