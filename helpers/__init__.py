"""GPT Inside and Out: the code the notebooks build once and keep using; each module names the chapter that teaches it.

Importing the package sets the Hugging Face libraries offline (unless ``COURSE_ALLOW_HUB=1``), so that nothing
tries to reach a hub and hangs; see :mod:`helpers.env`.
"""

from helpers import env as _env  # noqa: F401  (sets the offline switches on import)

__version__ = "0.1.0"
