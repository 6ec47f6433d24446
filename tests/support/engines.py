"""The engines a machine test runs on, each as a pytest parameter: `ENGINES` is the emulated
engine and the native one, the native one skipped (with the reason) where its self-check fails
on this host (`NATIVE_OK`, `NATIVE_WHY`). Importing this runs that self-check once."""

from __future__ import annotations

import pytest

from tender_ray.engines.native import self_check

NATIVE_OK, NATIVE_WHY = self_check()
ENGINES = [pytest.param("emulated"),
           pytest.param("native", marks=pytest.mark.skipif(not NATIVE_OK, reason=NATIVE_WHY))]
