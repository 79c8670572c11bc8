"""runtime.setup() has glibc keep freed memory: buffers freed and allocated again (as XLA:CPU
does every step) stop page-faulting back in, also XLA's temporary buffers over 64 MiB (which need
the computation run on the calling thread)."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT, python_env

# The median of the minor page faults of each of `rounds` calls of `fn` (a line for the scripts
# below): the steady state, not a one-off (a fresh process sometimes faults a block in once more in
# its first few rounds; CI once counted 50,184 faults, one whole 196 MiB buffer, in 1 of 10 runs).
MEDIAN_FAULTS = """
import resource, statistics
def median_faults(fn, rounds):
    faults = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return statistics.median(faults)
"""

# Allocates and frees a 64 MiB block 20 times (numpy's data comes from malloc), after an optional
# process.keep_freed_memory() (what setup() calls); prints the median minor page faults a round.
SCRIPT = MEDIAN_FAULTS + """
import sys
import numpy as np
if sys.argv[1] == "setup":
    from cpm_jax.cpu import process
    print(process.keep_freed_memory())
np.ones(16 << 20, np.float32)
print(median_faults(lambda: np.ones(16 << 20, np.float32), 20))
"""


def printed(script: str, *args: str, env: dict | None = None) -> list[str]:
    """The lines `script` printed, run with `args` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env or python_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_reused_without_page_faults():
    default = float(printed(SCRIPT, "plain")[-1])
    said, kept = printed(SCRIPT, "setup")
    assert "keeps freed blocks" in said, said
    # 64 MiB is 32 transparent huge pages or 16,384 small ones, faulted in again every round
    assert default >= 32
    assert float(kept) < default / 20, (kept, default)


def test_a_users_malloc_settings_are_left_alone():
    env = {**python_env(), "MALLOC_ARENA_MAX": "2"}  # not ending in "_": not a glibc tunable
    assert "keeps freed blocks" in printed(SCRIPT, "setup", env=env)[0]
    env = {**python_env(), "MALLOC_TRIM_THRESHOLD_": "1000000"}
    assert printed(SCRIPT, "setup", env=env)[0] == "malloc left as configured (MALLOC_TRIM_THRESHOLD_)"


# Runs a jitted computation with a 196 MiB temporary buffer 10 times, after runtime's set-up of
# malloc and the CPU dispatch ("setup", as setup() does; malloc's alone leaves them faulting:
# a worker thread's arena maps them anew); prints what the set-up said and the median minor page
# faults a run.
XLA_SCRIPT = MEDIAN_FAULTS + """
import sys
import jax, jax.numpy as jnp
from cpm_jax.cpu import process
if sys.argv[1] == "setup":
    print(process.keep_freed_memory())
    print(process.run_cpu_computations_inline())
x = jnp.ones((2048, 8192), jnp.float32)
step = jax.jit(lambda x: (lambda y: (y[::-1] * y).sum(0))(jnp.cumsum(x, axis=0)))
assert step.lower(x).compile().memory_analysis().temp_size_in_bytes > 128 << 20
step(x).block_until_ready()
print(median_faults(lambda: step(x).block_until_ready(), 10))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_xla_temporary_buffers_over_64_mib_are_reused_without_page_faults():
    plain = float(printed(XLA_SCRIPT, "plain")[-1])
    *said, inline = printed(XLA_SCRIPT, "setup")
    assert "run inline" in said[-1], said
    assert plain >= (128 << 20) // (2 << 20)  # at least 128 MiB a run, even in huge pages
    assert float(inline) < plain / 10, (inline, plain)


def test_a_users_cpu_dispatch_setting_is_left_alone():
    env = {**python_env(), "JAX_CPU_ENABLE_ASYNC_DISPATCH": "1"}
    said = printed(XLA_SCRIPT, "setup", env=env)[:-1]
    assert said[-1] == "CPU dispatch left as configured (JAX_CPU_ENABLE_ASYNC_DISPATCH=1)", said
