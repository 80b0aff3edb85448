#!/usr/bin/env python3
"""What an unstripped device binary is made of, by ELF section and by crate.

    cross/bloat.py BINARY [--top 25] [--json]

The crate of a symbol is the first path segment of its demangled name; for a trait
method `<T as Trait>::f` it is T's crate, or the trait's crate when T comes from core,
alloc or std (a generic of another crate instantiated on a std type). Inlining under fat
LTO moves code into its callers, so the figures say where code ended up, as cargo-bloat's
do; sections that are not code (read-only data, unwind tables) are listed separately.
Needs binutils for the binary's architecture (`nm` and `size` read any ELF here).
"""

import argparse
import collections
import json
import re
import subprocess
import sys

STD = {"core", "alloc", "std", "compiler_builtins", "hashbrown", "std_detect", "adler2",
       "miniz_oxide", "gimli", "addr2line", "object", "rustc_demangle", "memchr",
       "panic_unwind", "unwind"}
# std's own copies of these crates cannot be told apart from a dependency's by name;
# they are counted under the name either way


def crate_of(name: str) -> str:
    s = name.strip()
    if s.startswith("<"):
        inner = s[1:]
        inner = re.sub(r"^(&mut |&|\*const |\*mut |dyn |\[|\()+", "", inner)
        first = re.match(r"[A-Za-z_][A-Za-z0-9_]*", inner)
        self_crate = first.group(0) if first else "?"
        m = re.search(r" as ([A-Za-z_][A-Za-z0-9_]*)::", s)
        if self_crate in STD and m and m.group(1) not in STD:
            return m.group(1)
        if first and "::" in inner[: inner.find(" ") if " " in inner else len(inner)]:
            return self_crate
        return m.group(1) if m else self_crate
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", s)
    if m:
        return m.group(1)
    return "[C or unnamed]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    sections = {}
    out = subprocess.run(["size", "-A", "-d", a.binary], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = int(parts[1])
    nm = subprocess.run(["nm", "--print-size", "--size-sort", "--radix=d", "-C", a.binary],
                        capture_output=True, text=True, check=True)
    by_crate = collections.Counter()
    text_syms = 0
    for line in nm.stdout.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4 or parts[2] not in "tTwW":
            continue
        size = int(parts[1])
        text_syms += size
        by_crate[crate_of(parts[3])] += size
    text = sections.get(".text", text_syms)
    if a.json:
        print(json.dumps({"sections": sections, "crates": dict(by_crate.most_common())}))
        return 0
    mib = 1024 * 1024
    print(f"{a.binary}: file sections (MiB)")
    for name, size in sorted(sections.items(), key=lambda kv: -kv[1]):
        if size >= 64 * 1024:
            print(f"  {name:<22} {size / mib:6.2f}")
    print(f"code by crate (share of .text, {text / mib:.2f} MiB; symbols cover {text_syms / mib:.2f})")
    for crate, size in by_crate.most_common(a.top):
        print(f"  {crate:<28} {size / mib:6.3f} MiB  {100 * size / text:5.1f} %")
    rest = sum(by_crate.values()) - sum(s for _, s in by_crate.most_common(a.top))
    print(f"  {'(the rest)':<28} {rest / mib:6.3f} MiB  {100 * rest / text:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
