#!/usr/bin/env python3
"""Finds import cycles between the source files of each crate of the workspace.

Usage: python3 scripts/check-cycles.py [--verbose] [--with-root] [CRATE_DIR ...]
(default: every folder of the repository root with a Cargo.toml and a src/). Exits 1 and lists
the cycles when it finds any that the allow-list below does not name, else 0. Python 3 standard
library only.

The rule, precisely:

- Files are modules. Starting at each crate root (src/lib.rs, src/main.rs, src/bin/*.rs) the
  script follows `mod x;` declarations as rustc does: from a root or a mod.rs, `x` is x.rs or
  x/mod.rs beside it; from src/a.rs it is src/a/x.rs or src/a/x/mod.rs; inside an inline
  `mod m { ... }` the folder gains `m/`. So src/a.rs and src/a/mod.rs are module `a`, src/a/b.rs
  is `a::b`. A file no `mod` declaration reaches is not part of the crate and is not read.
  (`#[path]` attributes are not followed; the workspace uses none.)
- Comments (doc comments included: an intra-doc link is not a dependency), string and
  character literals are blanked before reading, so only code counts.
- A file depends on another when its code names a path into it: a `use` declaration (each
  leaf of a `use a::{b, c::d}` tree separately) or a path written in code (`crate::x::f()`).
  Paths are resolved from `crate::`, `self::`, `super::` (relative to the module the text is
  in, inline modules such as `mod tests` included) or, in `use` declarations and in code, from
  the name of a child module that the current module declares (`use layout::Layout;` in a
  mod.rs). A path is attributed to the deepest module that has a file of its own:
  `crate::a::b::Item` depends on src/a/b.rs when that file is a module, else on module `a`'s
  file (src/a.rs or src/a/mod.rs). Paths of other crates (`std::`, `::name`, `pangu_model::`)
  and `$crate::` in macros are not edges.
- The crate root (lib.rs, main.rs, src/bin/*.rs) is not a module file in this sense and not a
  node of the graph: it declares the module tree and holds crate-wide items (the crate's error
  type, its top-level API), so `crate::TrainError` is no edge, and neither are the root's own
  paths into its modules. A cycle through the root is therefore not reported (sim's lib.rs,
  whose `simulate*` functions call run, fold and workload, which return `crate::SimError`, is
  such a hub); `--with-root` makes the root a node like any other file to see them.
- One exception: in the file of a module that has submodules (a mod.rs, a crate root, or
  src/a.rs beside src/a/), the `mod` declarations of its submodules and `pub use` /
  `pub(crate) use` (any `pub(...)`) re-exports of items from its own submodules (children or
  deeper) are not edges: they are how a module directory publishes its parts. Every other
  reference counts: a plain (private) `use` of a submodule's item in mod.rs, a path into a
  submodule written in mod.rs's code, and any reference from a submodule to its parent's file
  (`use super::Model;`, or `use crate::model::Layout;` which resolves to model/mod.rs). So a
  submodule that needs a sibling's item imports it from the sibling (`super::layout::Layout`),
  not through the parent's re-export, or it depends on the parent's file. (A name that mod.rs
  re-exports and also uses unqualified in its own code is not seen as an edge: the script does
  not resolve names, only paths.)
- A self-reference (a file naming its own module or an inline module inside it) is not an edge.

Each strongly connected component of the file graph with more than one file is an import
cycle. For every reference inside such a component the script prints a shortest cycle through
it (each distinct cycle once), with the file and line of every reference on it. A component
is allowed only when ALLOWED below names exactly its set of files; an entry that matches no
component any more is reported as stale (not an error).
"""

import os
import re
import sys
from collections import defaultdict, deque

# Known cycles, each the exact set of files (relative to the repository root) of one
# strongly connected component, with the reason it is tolerated.
ALLOWED = []

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDENT = r"(?:r#)?[A-Za-z_][A-Za-z0-9_]*"


def blank(text):
    """`text` with comments, string and char literals replaced by spaces (newlines kept)."""
    out = list(text)
    n = len(text)
    i = 0

    def wipe(a, b):
        for j in range(a, min(b, n)):
            if out[j] != "\n":
                out[j] = " "

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            wipe(i, j)
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            wipe(i, j)
            i = j
        elif c in "br" and (i == 0 or not re.match(r"\w", text[i - 1])) and re.match(
            r'(?:b|br|r)#*"', text[i : i + 300]
        ):
            m = re.match(r'(b?r)(#*)"', text[i : i + 300])
            if m is None:  # b"...": an ordinary string after the prefix
                wipe(i, i + 1)
                i += 1
                continue
            end = '"' + m.group(2)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            wipe(i, j)
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            wipe(i, j + 1)
            i = j + 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{..}', '\''), else a lifetime or label.
            if text.startswith("\\", i + 1):
                j = i + 2
                while j < n and text[j] != "'":
                    j += 2 if text[j] == "\\" else 1
                wipe(i, j + 1)
                i = j + 1
            elif i + 2 < n and text[i + 2] == "'" and text[i + 1] != "\n":
                wipe(i, i + 3)
                i += 3
            else:
                i += 1
        else:
            i += 1
    return "".join(out)


def inline_modules(code):
    """(start, end, name) of every inline `mod name { ... }` block, by brace matching."""
    spans = []
    opens = {m.end() - 1: m.group(1) for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*\{", code)}
    stack = []
    for i, c in enumerate(code):
        if c == "{":
            stack.append((i, opens.get(i)))
        elif c == "}" and stack:
            start, name = stack.pop()
            if name is not None:
                spans.append((start, i, name))
    return spans


def inline_path(spans, pos):
    """Names of the inline modules enclosing `pos`, outermost first."""
    inside = [(s, name) for s, e, name in spans if s < pos < e]
    return [name for _, name in sorted(inside)]


def use_leaves(tree):
    """Expands a use tree (the text between `use` and `;`) into the paths of its leaves."""
    toks = re.findall(r"::|[{},*]|" + IDENT, tree)
    pos = 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def parse(prefix):
        nonlocal pos
        segs = list(prefix)
        while True:
            t = peek()
            if t == "*":
                pos += 1
                return [segs]
            if t == "{":
                pos += 1
                leaves = []
                while peek() not in ("}", None):
                    if peek() == ",":
                        pos += 1
                    else:
                        leaves += parse(segs)
                pos += 1
                return leaves
            if t is None or t in ("::", ",", "}") or not re.match(IDENT, t):
                return [segs]
            pos += 1
            if not (t == "self" and prefix and len(segs) == len(prefix)):
                segs.append(t.removeprefix("r#"))  # `{self}` names the prefix itself
            if peek() == "::":
                pos += 1
                continue
            if peek() == "as":
                pos += 2
            return [segs]

    if toks[:1] == ["::"]:
        return []  # `use ::name`: another crate
    return parse([])


class Crate:
    """One crate root's module tree: module path (tuple) -> file, and file -> module path."""

    def __init__(self, root_file):
        self.files = {}  # module path -> file
        self.module_of = {}  # file -> module path
        self.children = defaultdict(set)  # module path (incl. inline) -> declared child names
        self.code = {}  # file -> blanked text
        self.walk(root_file, (), os.path.dirname(root_file))

    def walk(self, path, module, child_dir):
        if path in self.module_of or not os.path.isfile(path):
            return
        self.files[module] = path
        self.module_of[path] = module
        with open(path, encoding="utf-8") as f:
            code = blank(f.read())
        self.code[path] = code
        spans = inline_modules(code)
        for s, _, name in spans:
            self.children[module + tuple(inline_path(spans, s))].add(name)
        for m in re.finditer(r"\bmod\s+(" + IDENT + r")\s*;", code):
            name = m.group(1).removeprefix("r#")
            inner = inline_path(spans, m.start())
            self.children[module + tuple(inner)].add(name)
            base = os.path.join(child_dir, *inner)
            for cand in (os.path.join(base, name + ".rs"), os.path.join(base, name, "mod.rs")):
                if os.path.isfile(cand):
                    sub = module + tuple(inner) + (name,)
                    sub_dir = os.path.dirname(cand) if cand.endswith("mod.rs") else cand[:-3]
                    self.walk(cand, sub, sub_dir)
                    break

    def target(self, segments):
        """The file of the deepest module with a file of its own on an absolute path."""
        for k in range(len(segments), -1, -1):
            f = self.files.get(tuple(segments[:k]))
            if f is not None:
                return f
        return None

    def absolute(self, segs, here):
        """`segs` (a path as written) made absolute from module `here`; None: another crate."""
        if not segs:
            return None
        head = segs[0]
        if head == "crate":
            return segs[1:]
        if head in ("self", "super"):
            base = list(here)
            i = 0
            while i < len(segs) and segs[i] in ("self", "super"):
                if segs[i] == "super":
                    if not base:
                        return None
                    base.pop()
                i += 1
            return base + segs[i:]
        if head in self.children.get(tuple(here), ()):
            return list(here) + segs
        return None


def references(crate, path):
    """(line, target file, text, is_reexport_of_own_submodule) of every crate path in `path`."""
    code = crate.code[path]
    module = crate.module_of[path]
    spans = inline_modules(code)
    refs = []

    def line(pos):
        return code.count("\n", 0, pos) + 1

    def add(pos, segs, text, reexport):
        here = module + tuple(inline_path(spans, pos))
        full = crate.absolute(segs, here)
        if full is None:
            return
        tgt = crate.target(full)
        if tgt is None or tgt == path:
            return
        own_sub = tuple(full[: len(module)]) == module and len(crate.module_of[tgt]) > len(module)
        refs.append((line(pos), tgt, text, reexport and own_sub))

    use_re = re.compile(r"\b(pub\s*(?:\([^)]*\))?\s*)?use\s+([^;]*);")
    used = []
    for m in use_re.finditer(code):
        used.append((m.start(), m.end()))
        for segs in use_leaves(m.group(2)):
            add(m.start(), segs, "use " + "::".join(segs), m.group(1) is not None)
    # Paths in code (outside the use declarations).
    rest = list(code)
    for a, b in used:
        for j in range(a, b):
            if rest[j] != "\n":
                rest[j] = " "
    rest = "".join(rest)
    path_re = re.compile(r"(?<![\w$:.])(" + IDENT + r")((?:\s*::\s*" + IDENT + r")+)")
    for m in path_re.finditer(rest):
        head = m.group(1)
        here = module + tuple(inline_path(spans, m.start()))
        if head not in ("crate", "self", "super") and head not in crate.children.get(here, ()):
            continue
        segs = [head] + re.findall(IDENT, m.group(2))
        add(m.start(), segs, "::".join(segs), False)
    return refs


def sccs(nodes, edges):
    """Tarjan's strongly connected components."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def shortest_path(edges, comp, src, dst):
    """Shortest path src -> dst inside `comp` (BFS), as a list of files."""
    prev = {src: None}
    q = deque([src])
    while q:
        v = q.popleft()
        if v == dst:
            break
        for w in sorted(edges[v]):
            if w in comp and w not in prev:
                prev[w] = v
                q.append(w)
    path, v = [], dst
    while v is not None:
        path.append(v)
        v = prev[v]
    return path[::-1]


def rel(p):
    return os.path.relpath(p, ROOT)


def check_crate(crate_dir, verbose, with_root):
    """Returns (cycles as printable blocks, components found as sets of relative paths)."""
    src = os.path.join(crate_dir, "src")
    roots = [os.path.join(src, f) for f in ("lib.rs", "main.rs")]
    bins = os.path.join(src, "bin")
    if os.path.isdir(bins):
        roots += [os.path.join(bins, f) for f in sorted(os.listdir(bins)) if f.endswith(".rs")]
    blocks, comps = [], []
    for root in roots:
        if not os.path.isfile(root):
            continue
        crate = Crate(root)
        edges = defaultdict(set)
        why = defaultdict(list)  # (a, b) -> [(line, text)]
        for f in crate.module_of:
            for ln, tgt, text, skip in references(crate, f):
                if skip or (not with_root and root in (f, tgt)):
                    continue
                edges[f].add(tgt)
                why[(f, tgt)].append((ln, text))
        if verbose:
            for (a, b), w in sorted(why.items()):
                print(f"  {rel(a)} -> {rel(b)}  ({', '.join(f'{ln}: {t}' for ln, t in w[:3])})")
        for comp in sccs(list(crate.module_of), edges):
            if len(comp) < 2:
                continue
            comps.append({rel(f) for f in comp})
            seen, lines = set(), []
            for a in sorted(comp):
                for b in sorted(edges[a] & comp):
                    cyc = [a] + shortest_path(edges, comp, b, a)  # a -> b -> ... -> a
                    body = cyc[:-1]
                    k = body.index(min(body))
                    key = tuple(body[k:] + body[:k])
                    if key in seen:
                        continue
                    seen.add(key)
                    lines.append("  cycle: " + " -> ".join(rel(f) for f in key + (key[0],)))
                    for x, y in zip(key, key[1:] + (key[0],)):
                        ln, text = why[(x, y)][0]
                        more = len(why[(x, y)]) - 1
                        extra = f" (+{more} more)" if more else ""
                        lines.append(f"    {rel(x)}:{ln}: {text}{extra}")
            names = ", ".join(sorted(rel(f) for f in comp))
            blocks.append((frozenset(rel(f) for f in comp), f"{rel(root)}: import cycle among {names}\n" + "\n".join(lines)))
    return blocks, comps


def main(argv):
    verbose = "--verbose" in argv
    with_root = "--with-root" in argv
    dirs = [a for a in argv if not a.startswith("--")]
    if not dirs:
        dirs = sorted(
            os.path.join(ROOT, d)
            for d in os.listdir(ROOT)
            if os.path.isfile(os.path.join(ROOT, d, "Cargo.toml")) and os.path.isdir(os.path.join(ROOT, d, "src"))
        )
    failed, found = False, []
    for d in dirs:
        if verbose:
            print(f"{rel(d)}:")
        blocks, comps = check_crate(os.path.abspath(d), verbose, with_root)
        found += comps
        for comp, text in blocks:
            allowed = [why for files, why in ALLOWED if files == comp]
            if allowed:
                print(f"allowed ({allowed[0]}): {text}")
            else:
                print(text)
                failed = True
    scanned = {rel(os.path.abspath(d)) + os.sep for d in dirs}
    for files, why in ALLOWED:
        in_scope = all(any(f.startswith(c) for c in scanned) for f in files)
        if in_scope and files not in found:
            print(f"note: allow-list entry '{why}' matches no cycle now: remove it from {rel(__file__)}")
    names = ", ".join(os.path.basename(d) for d in dirs)
    if failed:
        print(f"check-cycles: import cycles found (crates: {names})")
        return 1
    print(f"check-cycles: no import cycles outside the allow-list (crates: {names})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
