"""lm-evaluation-harness's own command line (``lm-eval ...``) run after this package registered its
Auto classes, so ``--model hf --model_args pretrained=DIR`` loads a converted folder with no
``trust_remote_code`` (as flash-linear-attention's ``evals/harness.py`` runs it for its models).
In a process that never imported this package, ``trust_remote_code=True`` does the same through
the module a converted folder carries."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def run_harness(argv: Sequence[str]) -> None:
    """``lm-eval ARGV...``, in this process, with the In-Place TTT Auto classes registered."""
    from ..families.hf import register

    register()
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as e:
        raise ImportError(f"ittt lm-eval runs lm-evaluation-harness, which does not import here ({e}): pip install 'inplace-ttt[eval]'") from e
    sys.argv = ["lm-eval", *argv]  # lm-eval's command line reads its arguments from sys.argv
    cli_evaluate()
