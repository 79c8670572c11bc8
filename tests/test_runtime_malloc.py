"""runtime.setup() has glibc keep freed memory: buffers freed and allocated again (as XLA:CPU
does every step) stop page-faulting back in."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT, python_env

# Allocates and frees a 64 MiB block 20 times (numpy's data comes from malloc), after an optional
# runtime.keep_freed_memory() (what setup() calls); prints the minor page faults of those 20 rounds.
SCRIPT = """
import resource, sys
import numpy as np
if sys.argv[1] == "setup":
    from cpm_jax import runtime
    print(runtime.keep_freed_memory())
np.ones(16 << 20, np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    np.ones(16 << 20, np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(*args: str, env: dict | None = None) -> list[str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=ROOT, env=env or python_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_reused_without_page_faults():
    default = int(faults("plain")[-1])
    said, kept = faults("setup")
    assert "keeps freed blocks" in said, said
    # 64 MiB is 32 transparent huge pages or 16,384 small ones, faulted in again every round
    assert default >= 20 * 32
    assert int(kept) < default / 20, (kept, default)


def test_a_users_malloc_settings_are_left_alone():
    env = {**python_env(), "MALLOC_ARENA_MAX": "2"}  # not ending in "_": not a glibc tunable
    assert "keeps freed blocks" in faults("setup", env=env)[0]
    env = {**python_env(), "MALLOC_TRIM_THRESHOLD_": "1000000"}
    assert faults("setup", env=env)[0] == "malloc left as configured (MALLOC_TRIM_THRESHOLD_)"
