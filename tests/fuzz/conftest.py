"""Fuzz settings. A CI run (`make test`) draws FUZZ_EXAMPLES cases per target (1000), derandomized so CI is
reproducible; `make fuzz` draws many more, randomly, and keeps failing examples in .hypothesis/ to replay them."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
DEEP = os.environ.get("FUZZ_DEEP") == "1"

settings.register_profile(
    "fuzz",
    max_examples=EXAMPLES,
    deadline=None,  # real servers: a case's time depends on the machine, not on correctness
    derandomize=not DEEP,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    print_blob=True,
    **({} if DEEP else {"database": None}),  # deep runs keep hypothesis' default example database
)
fuzz_settings = settings.get_profile("fuzz")
