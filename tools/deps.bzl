"""cllm_mem_dependencies(): every repository the build of cllm-mem needs, offline.

Our WORKSPACE calls it, and so does any workspace that builds against cllm-mem:

    local_repository(name = "cllm_mem", path = "/path/to/cllm-mem")
    load("@cllm_mem//tools:deps.bzl", "cllm_mem_dependencies")
    cllm_mem_dependencies()

then depends on "@cllm_mem//:cllm_mem". Declared (each one only if the workspace has
not declared that name already): rules_cc, rules_java, remote_coverage_tools (the
local shims under tools/bazel_offline/ that Bazel 4.2.3 would otherwise download),
platforms (Debian's bazel-platforms) and system (/usr: mimalloc, hwloc, Criterion,
... from Debian's -dev packages, see tools/bazel_offline/system/BUILD.system).
"""

def _shim_repository_impl(ctx):
    # The shim directory of this repository, wherever it is checked out.
    src = ctx.path(ctx.attr.workspace_file).dirname
    for child in src.readdir():
        ctx.symlink(child, child.basename)

_shim_repository = repository_rule(
    implementation = _shim_repository_impl,
    attrs = {"workspace_file": attr.label(allow_single_file = True, mandatory = True)},
    local = True,
)

def _declare(rule, name, **kwargs):
    if native.existing_rule(name) == None:
        rule(name = name, **kwargs)

def cllm_mem_dependencies():
    """Declares the repositories cllm-mem's BUILD files use (see the file comment)."""
    for name in ["rules_cc", "rules_java", "remote_coverage_tools"]:
        _declare(
            _shim_repository,
            name,
            workspace_file = Label("//tools/bazel_offline/%s:WORKSPACE" % name),
        )
    _declare(native.local_repository, "platforms", path = "/usr/share/bazel/tools/platforms")
    _declare(
        native.new_local_repository,
        "system",
        path = "/usr",
        build_file = str(Label("//tools/bazel_offline/system:BUILD.system")),
    )
