"""What of protos/buf.yaml decides `buf breaking`'s verdict, and the reviewed changes to it.

A change is judged by the rules it is compared against (the parent's for the history test, the compared
ref's for `make breaking`), never by the ones it brings: otherwise a commit that retypes a field and adds
`except: [FIELD_SAME_TYPE]` passes both checks. Those rules can still change, so a change to them is refused
unless it is one of REVIEWED below, added in the same change as the buf.yaml edit so a reviewer reads both
(docs/contracts.md, "Changing the breaking rules").

Everything in buf.yaml but its `lint` sections counts as a change to the rules: `breaking` itself, and what
decides which files a module holds (a module's path or excludes), since a file left out of the build is a
file deleted as far as `buf breaking` can tell.

`make breaking` runs this as a script: `python tests/contract/breaking_config.py <git ref>` fails on an
unreviewed change between the ref's protos/buf.yaml and the working tree's, else prints the ref's, which
`make breaking` hands to `buf breaking --config`."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Reviewed:
    """A change to the breaking configuration (`breaking_config` of buf.yaml before and after) someone reviewed."""

    before: dict[str, Any]
    after: dict[str, Any]
    why: str


REVIEWED: tuple[Reviewed, ...] = (
    Reviewed(
        before={"version": "v2", "breaking": {"use": ["FILE"]}},
        after={"version": "v2", "breaking": {"use": ["FILE"], "ignore": ["google"]}},
        why="65ae277d: googleapis' HTTP annotations, vendored unchanged under protos/google/, are not our contract",
    ),
    Reviewed(
        before={"version": "v2", "breaking": {"use": ["FILE"], "ignore": ["google"]}},
        after={
            "version": "v2",
            "breaking": {
                "use": [
                    "FILE",
                    "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED",
                    "FIELD_NO_DELETE_UNLESS_NAME_RESERVED",
                    "ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED",
                    "ENUM_VALUE_NO_DELETE_UNLESS_NAME_RESERVED",
                ],
                "except": ["FIELD_NO_DELETE", "ENUM_VALUE_NO_DELETE"],
                "ignore": ["google"],
            },
        },
        why="a field or enum value deleted with its number and name reserved (docs/contracts.md) is no break; "
        "deleted otherwise, it still is",
    ),
)


def breaking_config(buf_yaml: str | None) -> dict[str, Any]:
    """buf.yaml's text (None: there is none) without what only `buf lint` reads."""
    parsed = yaml.safe_load(buf_yaml) if buf_yaml else None
    config: dict[str, Any] = dict(parsed) if isinstance(parsed, dict) else {}
    config.pop("lint", None)
    if isinstance(config.get("modules"), list):
        config["modules"] = [
            {key: value for key, value in module.items() if key != "lint"} if isinstance(module, dict) else module
            for module in config["modules"]
        ]
    return config


def unreviewed_change(before: str | None, after: str | None, reviewed: tuple[Reviewed, ...] = REVIEWED) -> str:
    """Why buf.yaml's change from `before` to `after` is refused; "" when its breaking rules are unchanged or the
    change is a reviewed one."""
    old, new = breaking_config(before), breaking_config(after)
    if old == new or any(r.before == old and r.after == new for r in reviewed):
        return ""
    return (
        "it changes the breaking rules of protos/buf.yaml, which judge it and every later change, "
        f"from {old} to {new}. A change is judged by the rules before it; if this one is meant, add "
        "Reviewed(before=..., after=..., why=...) with these two to REVIEWED in tests/contract/breaking_config.py "
        "in the same change (docs/contracts.md, 'Changing the breaking rules')"
    )


def buf_yaml_at(ref: str) -> str | None:
    """protos/buf.yaml at the git ref `ref`; None when it has none."""
    shown = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:protos/buf.yaml"], capture_output=True, text=True, timeout=60
    )
    return shown.stdout if shown.returncode == 0 else None


def main(ref: str) -> int:
    against = buf_yaml_at(ref)
    if against is None:
        print(f"error: no protos/buf.yaml at {ref} to judge the working tree's protos/ by", file=sys.stderr)
        return 1
    refused = unreviewed_change(against, (ROOT / "protos" / "buf.yaml").read_text())
    if refused:
        print(f"error: the working tree's protos/, compared with {ref}: {refused}", file=sys.stderr)
        return 1
    print(against, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
