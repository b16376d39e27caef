#!/usr/bin/env python3
"""Every C snippet of README.md compiles, links and checks the statuses it gets.

  readme_snippets_test.py README.md LIBCLLM-MEM.SO HEADER...

A ```c block is compiled as the body of `int snippet_N(void)` (a block with its own
main() as a whole file) after PRELUDE below, which stands for the program around it,
with -std=c11 -Wall -Wextra -Werror by clang (whose warn_unused_result flags an
ignored status of a CLLM_NODISCARD function) and by gcc, then linked against the
library (a snippet of the Redis backend, //:cllm_kv_redis, is compiled, not
linked). A call to a function that returns cllm_status_t used as a statement (its
status dropped, with or without a (void) cast) is an error too. Exit 0 when every
snippet passes.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

# What the program around a README snippet provides (the reader's own names).
PRELUDE = r"""
#include <cllm/mem.h>
#include <cllm/kv_redis.h>
#include <cllm/kv_tier.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t bytes = 1 << 20, n = 64, m = 4096, model_bytes = 1 << 20;
uint64_t offset = 0;
int layers = 2, layer = 0;
cllm_kv_token_t prompt[64];
size_t sz[64];
void *cache;
cllm_arena_t *a;  /* the arena of the snippet before */
cllm_kv_cache_t *kv;  /* the cache of the snippet before */
size_t drop_cached(void *user, cllm_category_t cat, size_t needed) {
  (void)user; (void)cat; (void)needed;
  return 0;
}
"""


def snippets(readme):
    out, block, start = [], None, 0
    for i, line in enumerate(open(readme, encoding="utf-8").read().split("\n"), 1):
        if block is None and line.strip() == "```c":
            block, start = [], i
        elif block is not None and line.strip() == "```":
            out.append((start, "\n".join(block)))
            block = None
        elif block is not None:
            block.append(line)
    return out


def status_functions(headers):
    names = set()
    for h in headers:
        text = re.sub(r"/\*.*?\*/|//[^\n]*", " ", open(h, encoding="utf-8").read(), flags=re.S)
        names.update(re.findall(r"\bcllm_status_t\s+(cllm_\w+)\s*\(", text))
    return names


def dropped_statuses(code, status_fns):
    """Statements that call a status-returning function and drop the result."""
    code = re.sub(r"/\*.*?\*/|//[^\n]*", " ", code, flags=re.S)
    found = []
    for m in re.finditer(r"(?:^|[;{}]|\belse\b|\)\s*\n)\s*(?:\(void\)\s*)?(cllm_\w+)\s*\(", code):
        if m.group(1) in status_fns:
            found.append(m.group(1))
    return found


def main(argv):
    if len(argv) < 4:
        raise SystemExit(__doc__)
    readme, so, headers = argv[1], argv[2], [h for h in argv[3:] if h.endswith(".h")]
    include_dir = os.path.dirname(os.path.dirname(os.path.abspath(headers[0])))
    compilers = [c for c in ("clang", "gcc") if shutil.which(c)]
    if "clang" not in compilers:
        print("FAIL: clang is needed (tools/bazel installs it)")
        return 1
    status_fns = status_functions(headers)
    if len(status_fns) < 20:
        print("FAIL: found only %d status-returning functions in the headers" % len(status_fns))
        return 1
    blocks = snippets(readme)
    if not blocks:
        print("FAIL: no ```c block in " + readme)
        return 1
    failures = 0
    tmp = tempfile.mkdtemp()
    try:
        for idx, (line, code) in enumerate(blocks):
            where = "README.md:%d (C snippet %d)" % (line, idx + 1)
            if re.search(r"\bint\s+main\s*\(", code):
                source = code + "\n"
            else:
                source = (PRELUDE + "\nint snippet_%d(void);\nint snippet_%d(void) {\n#line %d \"README.md\"\n%s\n"
                          "  return 0;\n}\nint main(void) { return 0; }\n") % (idx, idx, line + 1, code)
            src = os.path.join(tmp, "snippet_%d.c" % idx)
            with open(src, "w") as f:
                f.write(source)
            ok = True
            for dropped in dropped_statuses(code, status_fns):
                print("FAIL: %s: the status of %s is not checked" % (where, dropped))
                ok = False
            for cc in compilers:
                exe = os.path.join(tmp, "snippet_%d_%s" % (idx, cc))
                cmd = [cc, "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
                       "-I", include_dir, src, "-o", exe, so]
                if "redis" in code:  # //:cllm_kv_redis is a library of its own: compile only
                    cmd = cmd[:-3] + ["-c", "-o", exe + ".o"]
                r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   universal_newlines=True)
                if r.returncode != 0:
                    print("FAIL: %s does not build with %s:\n%s" % (where, cc, r.stdout))
                    ok = False
            print("%s: %s" % ("ok  " if ok else "FAIL", where))
            failures += not ok
    finally:
        shutil.rmtree(tmp)
    print("%d C snippets, %d failed (%s)" % (len(blocks), failures, ", ".join(compilers)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
