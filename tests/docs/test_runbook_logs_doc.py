"""A runbook's `kubectl logs deploy/<name>` reads one pod of the deployment (kubectl's --all-pods defaults to
false), and staging runs several replicas of each service: the lines it looks for, some the only record of
what was lost (ShopmeshEventsDropped), may be in another pod's log. The docs read all of them, by label
(`-l app.kubernetes.io/name=<service> -c <service> --tail=-1 --prefix`), or say --all-pods."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# `kubectl ... logs deploy/x` or `deployment/x` (or `deployments/x`), up to the end of the shell command.
ONE_POD_OF_A_DEPLOYMENT = re.compile(r"kubectl\b[^`\n|]*?\blogs\b[^`\n|]*?\bdeploy(?:ments?)?/[^`\n|]*")


def test_no_doc_reads_the_logs_of_one_pod_of_a_deployment() -> None:
    found = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
        for match in ONE_POD_OF_A_DEPLOYMENT.finditer(path.read_text())
        if "--all-pods" not in match.group(0)
    ]
    assert not found, "reads one pod's log, not every replica's:\n" + "\n".join(found)
