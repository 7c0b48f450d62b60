"""docs/v2.md's gRPC error table names every status the service's one mapping
(``service.grpc.status.STATUS``) answers, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from service.grpc.status import STATUS

DOC = Path(__file__).resolve().parents[2] / "docs" / "v2.md"


def documented_statuses() -> set[str]:
    section = DOC.read_text(encoding="utf-8").split("### Limits and errors", 1)[1]
    return set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.MULTILINE))


def test_the_grpc_error_table_is_the_mapping() -> None:
    mapped = {code.name for _, code in STATUS}
    # RESOURCE_EXHAUSTED also for gRPC's own message limit; UNIMPLEMENTED for missing RPCs
    assert documented_statuses() == mapped | {"UNIMPLEMENTED"}
