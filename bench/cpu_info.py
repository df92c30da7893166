"""The benches' description of the CPU they ran on.

Two machines that both call themselves "AMD EPYC" can differ by a factor
of three in these benches (a newer core, AVX-512 sorts in NumPy), so the
description names the family, the model and the widest vector unit.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpuinfo_fields() -> dict:
    """The first processor's ``name: value`` lines of ``/proc/cpuinfo`` (empty off Linux)."""
    path = Path("/proc/cpuinfo")
    fields = {}
    if not path.is_file():
        return fields
    for line in path.read_text().splitlines():
        if not line.strip():
            break
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields


def cpu_description() -> str:
    """For example ``AMD EPYC (family 26, model 2; AVX-512), 2 cores``."""
    fields = _cpuinfo_fields()
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    details = [f"family {fields['cpu family']}, model {fields['model']}"] if "cpu family" in fields else []
    if vector:
        details.append(vector)
    return f"{name}{' (' + '; '.join(details) + ')' if details else ''}, {os.cpu_count()} cores"
