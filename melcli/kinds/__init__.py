"""Feature kinds: one module each, registered here with one line.

A kind is a `melcli.params.FeatureParams` subclass: its own parameters (fields
with their `Setting`), ``n_bins``, ``row_frequencies``, a per-file check, its
stage on top of the shared framing and STFT (``block_stage``), whether its last
stage needs the whole entry, and its warnings. The command line (one command per
kind), the manifest, the writers, inspect, ``--like`` and the parity tests take
the kinds from `KINDS`. Importing this package loads no numerical library.
"""

from __future__ import annotations

from typing import Any

from melcli.errors import ParameterError
from melcli.kinds.fbank import FbankParams
from melcli.kinds.mel import MelParams
from melcli.kinds.mfcc import KaldiMfccParams, MfccParams
from melcli.kinds.stft import StftParams
from melcli.params import FeatureParams

#: Every feature kind by name (its command), in the order of ``melcli --help``.
KINDS: dict[str, type[FeatureParams]] = {
    cls.NAME: cls for cls in (MelParams, StftParams, MfccParams, FbankParams)
}
#: A kind's other front ends, by (kind, ``frontend``): one command, another class
#: (the kind's `KINDS` class is its default front end).
FRONTENDS: dict[tuple[str, str], type[FeatureParams]] = {("mfcc", "kaldi"): KaldiMfccParams}


def kind_class(name: Any, frontend: Any = None) -> type[FeatureParams]:
    """The parameters class of the kind called ``name`` (with that ``frontend``;
    None: the kind's default).

    Raises
    ------
    ParameterError
        For a name that is not a kind, or a front end it does not have.
    """
    try:
        cls = KINDS[name]
    except (KeyError, TypeError):
        raise ParameterError(
            f"must be one of: {', '.join(KINDS)}", param="kind", value=name
        ) from None
    if frontend is None or frontend == getattr(cls, "frontend", None):
        return cls
    try:
        return FRONTENDS[name, frontend]
    except (KeyError, TypeError):
        have = [getattr(cls, "frontend", None)] + [f for k, f in FRONTENDS if k == name]
        raise ParameterError(f"must be one of: {', '.join(map(str, have))}",
                             param="frontend", value=frontend) from None  # fmt: skip


def kind_classes(name: str) -> list[type[FeatureParams]]:
    """Every class of the kind called ``name``: its default front end first."""
    return [KINDS[name], *(cls for (kind, _), cls in FRONTENDS.items() if kind == name)]
