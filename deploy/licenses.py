#!/usr/bin/env python3
"""Offline licence check: every package `cargo metadata` lists for this
workspace (all features, every target, from Cargo.lock) must be usable
under the allow-list in deny.toml, the same list CI's cargo-deny job
enforces (it adds the advisory database, which needs the network). No
cargo-deny install: building it would cost minutes of .ci/run's budget.

SPDX expressions: AND, OR, WITH, parentheses, and the legacy "/" for OR.
A licence with an exception ("Apache-2.0 WITH LLVM-exception") is allowed
only if that whole form is in the list. Packages without an expression
(only a licence file) fail unless deny.toml names them in
[[licenses.exceptions]] or [[licenses.clarify]].

  python3 deploy/licenses.py              check (exit 1 on a violation)
  python3 deploy/licenses.py --self-test  show that violations are caught
"""
import json
import pathlib
import re
import subprocess
import sys
import time
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_policy(path=ROOT / "deny.toml"):
    cfg = tomllib.loads(path.read_text())
    lic = cfg.get("licenses", {})
    allow = set(lic.get("allow", []))
    per_crate = {}
    for exc in lic.get("exceptions", []):
        name = exc.get("crate") or exc.get("name")
        per_crate.setdefault(name, set()).update(exc.get("allow", []))
    clarified = {}
    for c in lic.get("clarify", []):
        name = c.get("crate") or c.get("name")
        clarified[name] = c["expression"]
    return allow, per_crate, clarified


TOKEN = re.compile(r"\s*(\(|\)|[A-Za-z0-9.+\-:]+|/)")


def tokenize(expr):
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot parse licence expression {expr!r} at {pos}")
        tok = m.group(1)
        out.append("OR" if tok == "/" else tok)
        pos = m.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return out


def parse(expr):
    """SPDX expression -> nested ('OR'|'AND', [children]) or licence string."""
    tokens = tokenize(expr)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"incomplete licence expression {expr!r}")
        pos += 1
        return tokens[pos - 1]

    def atom():
        tok = take()
        if tok == "(":
            node = disjunction()
            if take() != ")":
                raise ValueError(f"unbalanced parentheses in {expr!r}")
            return node
        if tok in ("AND", "OR", "WITH", ")"):
            raise ValueError(f"unexpected {tok!r} in {expr!r}")
        if peek() == "WITH":
            take()
            return f"{tok} WITH {take()}"
        return tok

    def conjunction():
        parts = [atom()]
        while peek() == "AND":
            take()
            parts.append(atom())
        return parts[0] if len(parts) == 1 else ("AND", parts)

    def disjunction():
        parts = [conjunction()]
        while peek() == "OR":
            take()
            parts.append(conjunction())
        return parts[0] if len(parts) == 1 else ("OR", parts)

    node = disjunction()
    if pos != len(tokens):
        raise ValueError(f"trailing tokens in {expr!r}")
    return node


def satisfied(node, allow, used):
    """Whether the expression can be met with `allow`; records in `used` the
    licences of the first way found."""
    if isinstance(node, str):
        if node in allow:
            used.add(node)
            return True
        return False
    op, kids = node
    if op == "AND":
        picked = set()
        if all(satisfied(k, allow, picked) for k in kids):
            used |= picked
            return True
        return False
    for k in kids:
        picked = set()
        if satisfied(k, allow, picked):
            used |= picked
            return True
    return False


def check(packages, allow, per_crate, clarified):
    """packages: [{name, version, license}] -> (problems, used licences)."""
    problems, used = [], set()
    for p in packages:
        expr = clarified.get(p["name"]) or p.get("license")
        who = f"{p['name']} {p['version']}"
        if not expr:
            problems.append(f"{who}: no licence expression (only a licence file?); clarify it in deny.toml")
            continue
        try:
            node = parse(expr)
        except ValueError as e:
            problems.append(f"{who}: {e}")
            continue
        if not satisfied(node, allow | per_crate.get(p["name"], set()), used):
            problems.append(f"{who}: {expr!r} is not satisfied by deny.toml's allow-list")
    return problems, used


def cargo_packages():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)["packages"]


def main():
    start = time.monotonic()
    allow, per_crate, clarified = load_policy()
    packages = cargo_packages()
    problems, used = check(packages, allow, per_crate, clarified)
    elapsed = time.monotonic() - start
    expressions = {p.get("license") for p in packages}
    for unused in sorted(allow - used):
        print(f"warning: deny.toml allows {unused}, which no package needs")
    if problems:
        print("\n".join(problems))
        sys.exit(f"licences: {len(problems)} of {len(packages)} packages not allowed")
    print(f"ok  licences: {len(packages)} packages, {len(expressions)} distinct expressions, "
          f"all within deny.toml's {len(allow)} allowed ({elapsed:.2f} s)")


def self_test():
    allow, per_crate, clarified = load_policy()
    cases = [
        ("MIT OR Apache-2.0", True),
        ("Apache-2.0/MIT", True),
        ("(MIT OR Apache-2.0) AND Unicode-3.0", True),
        ("Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT", True),
        ("GPL-3.0-only", False),
        ("MIT AND GPL-3.0-only", False),
        ("LGPL-2.1-or-later", False),
        ("Apache-2.0 WITH LLVM-exception", False),
        ("MIT OR", None),
        (None, False),
    ]
    failures = 0
    for expr, expect in cases:
        pkg = {"name": "probe", "version": "0.0.0", "license": expr}
        problems, _ = check([pkg], allow, per_crate, clarified)
        ok = not problems
        want = "accepted" if expect else "rejected"
        got = "accepted" if ok else "rejected"
        good = (ok == bool(expect))
        failures += not good
        print(f"{'ok  ' if good else 'FAIL'} {expr!r}: {got} (want {want})" + (f": {problems[0]}" if problems else ""))
    if failures:
        sys.exit(f"licence self-test: {failures} case(s) misjudged")
    print(f"ok  licence self-test: {len(cases)} cases")


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        self_test()
    elif sys.argv[1:]:
        sys.exit(__doc__)
    else:
        main()
