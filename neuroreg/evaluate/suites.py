"""The built-in evaluation suites, registered in the order they run.

Adding a suite: write its module with a ``@register_suite`` function (see
``neuroreg.evaluate.suite``) and import it here; a later suite may read an earlier
one's results from ``ctx.shared`` (frequency reads adversarial and corruptions).
"""

from __future__ import annotations

from neuroreg.evaluate.suite import SUITES, Suite

# Imported for their registrations; the order of these lines is the order suites run in.
# isort: off
from neuroreg.evaluate import clean  # noqa: F401, E402
from neuroreg.evaluate import noise  # noqa: F401, E402
from neuroreg.evaluate import adversarial  # noqa: F401, E402
from neuroreg.evaluate import transfer  # noqa: F401, E402
from neuroreg.evaluate import boundary  # noqa: F401, E402
from neuroreg.evaluate import corruptions  # noqa: F401, E402
from neuroreg.evaluate import frequency  # noqa: F401, E402
# isort: on

__all__ = ["SUITES", "Suite", "suite_names"]


def suite_names() -> tuple[str, ...]:
    return SUITES.names()
