#!/usr/bin/env python3
"""What libcllm-mem exports is what its public headers declare.

  symbols_test.py LIB.so LIB.a HEADER...   (HEADER: every public header, version.h among them)

The public API is derived from the headers (every file-scope declaration of a
cllm_* function or object; a CLLM_API one is public, one without CLLM_API is an
error, and so is a non-static function defined in a header). Then:
  - the shared library exports exactly that list (no leak, no gap);
  - the static archive defines exactly that list as global symbols (every private
    symbol was made local);
  - SONAME is libcllm-mem.so.MAJOR (MAJOR from version.h); NEEDED names mimalloc,
    hwloc and the C library only (plus a sanitizer runtime in sanitizer builds);
  - neither file carries debug information.
Exit status 0 when all hold, 1 with every finding listed otherwise.
"""
import os
import re
import subprocess
import sys

SANITIZER_RUNTIMES = re.compile(r"^lib(asan|ubsan|tsan|lsan)\.so")
ALLOWED_NEEDED = re.compile(r"^(libmimalloc\.so\.\d+|libhwloc\.so\.\d+|libc\.so\.6|ld-linux-x86-64\.so\.2)$")
REQUIRED_NEEDED = ("libmimalloc.so", "libhwloc.so")
# Symbols the compiler adds to instrumented objects (sanitizer builds).
COMPILER_SYMBOLS = re.compile(r"^__(odr_asan_gen_|asan_|tsan_|ubsan_|sancov_)")


def strip_comments_and_directives(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r"\\\n", " ", text)  # continued preprocessor lines
    return "\n".join(l for l in text.split("\n") if not l.lstrip().startswith("#"))


def file_scope_statements(text):
    """Yields (kind, text): 'decl' for `...;` and 'def' for the text before `{`,
    both at brace depth 0."""
    depth, buf = 0, []
    for ch in text:
        if ch == "{":
            if depth == 0:
                yield "def", "".join(buf)
                buf = []
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0:
            if ch == ";":
                yield "decl", "".join(buf)
                buf = []
            else:
                buf.append(ch)


def public_api(headers):
    """Returns (set of public names, list of errors)."""
    names, errors = set(), []
    for path in headers:
        text = strip_comments_and_directives(open(path, encoding="utf-8").read())
        for kind, stmt in file_scope_statements(text):
            stmt = " ".join(stmt.split())
            words = set(re.findall(r"\w+", stmt))
            if not stmt or "typedef" in words:
                continue
            fn = re.search(r"\b(cllm_\w+)\s*\(", stmt)
            where = "%s: %s" % (os.path.basename(path), stmt[:90])
            if kind == "def":
                if fn and "static" not in words:
                    errors.append("non-static function defined in a header: " + where)
                continue
            if "static" in words:
                continue
            if fn:
                name = fn.group(1)
            else:
                ids = re.findall(r"\b(cllm_\w+)\b", stmt)
                if "CLLM_API" not in words or not ids:
                    continue
                name = ids[-1]  # an object: its name ends the declaration
            if "CLLM_API" not in words:
                errors.append("declared without CLLM_API (hidden, so not exported): " + where)
                continue
            names.add(name)
    return names, errors


def run(*cmd):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout


def defined_globals(nm_output):
    out = set()
    for line in nm_output.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TDBRVWGSi" and not COMPILER_SYMBOLS.match(parts[2]):
            out.add(parts[2].split("@")[0])
    return out


def compare(what, got, want, errors):
    for name in sorted(got - want):
        errors.append("%s: leaks %s (not declared public in include/cllm/*.h)" % (what, name))
    for name in sorted(want - got):
        errors.append("%s: lacks %s (declared public, not exported)" % (what, name))


def version_major(version_h):
    m = re.search(r"^#define CLLM_VERSION_MAJOR (\d+)$", open(version_h).read(), flags=re.M)
    if not m:
        raise SystemExit("no CLLM_VERSION_MAJOR in " + version_h)
    return m.group(1)


def main(argv):
    if len(argv) < 4:
        raise SystemExit(__doc__)
    so, archive = argv[1], argv[2]
    headers = [h for h in argv[3:] if h.endswith(".h")]
    version_h = [h for h in headers if os.path.basename(h) == "version.h"]
    if len(version_h) != 1:
        raise SystemExit("version.h is not among the headers")
    version_h = version_h[0]
    api, errors = public_api(headers)
    if len(api) < 50:  # the parser found nothing like the API: the test is broken
        errors.append("only %d public names found in %d headers" % (len(api), len(headers)))

    compare(os.path.basename(so), defined_globals(run("nm", "-D", "--defined-only", so)), api, errors)
    compare(os.path.basename(archive), defined_globals(run("nm", "-g", "--defined-only", archive)),
            api, errors)

    dynamic = run("readelf", "-d", so)
    sonames = re.findall(r"\(SONAME\)\s+Library soname: \[(.*)\]", dynamic)
    want_soname = "libcllm-mem.so." + version_major(version_h)
    if sonames != [want_soname]:
        errors.append("SONAME is %s, want %s" % (sonames, want_soname))
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", dynamic)
    for lib in needed:
        if not ALLOWED_NEEDED.match(lib) and not SANITIZER_RUNTIMES.match(lib):
            errors.append("NEEDED %s: only mimalloc, hwloc and libc are expected" % lib)
    for prefix in REQUIRED_NEEDED:
        if not any(lib.startswith(prefix) for lib in needed):
            errors.append("NEEDED lacks %s (the library would not load on its own)" % prefix)

    for f in (so, archive):
        if ".debug_info" in run("objdump", "-h", f):
            errors.append("%s carries debug info" % os.path.basename(f))

    for e in errors:
        print("FAIL: " + e)
    print("%d public names from %d headers; SONAME %s; NEEDED %s; %d problems"
          % (len(api), len(headers), sonames, " ".join(needed), len(errors)))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
