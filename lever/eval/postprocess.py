"""Post-processing of the VLM's generated text, as in the original evaluation."""

from __future__ import annotations

import re

_STOP = re.compile("Question|Answer|Short")  # the model starting the next demonstration


def postprocess(raw: str) -> str:
    """Cut at the first "Question"/"Answer"/"Short", then at the first ", ", then strip.

    "paris, france Question:" -> "paris"; only the first ", " cuts, and a comma
    without a following space ("1,000") stays.
    """
    text = _STOP.split(raw, maxsplit=1)[0]
    text = text.split(", ", 1)[0]
    return text.strip()
