"""Compiler flags shared by every target of cllm-mem."""

CLLM_COPTS = [
    "-std=c11",
    "-D_GNU_SOURCE",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fvisibility=hidden",
]

CLLM_CXXOPTS = [
    "-std=c++17",
    "-Wall",
    "-Wextra",
    "-Werror",
]

CLLM_LINKOPTS = ["-lpthread", "-ldl"]

# Test and benchmark programs: same warnings, default visibility.
CLLM_TEST_COPTS = [
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wno-unused-function",
    "-Wno-unused-parameter",
]
