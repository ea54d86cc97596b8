"""Agora's rules for a channel name (`cname`), as pure functions: the daemon's config and the starters' announce
check names the same way, and the starter-side install has them.

Channel recording (scenes 0 and 2): 1 to 63 bytes from a-z A-Z 0-9 space and `!#$%&()+-:;<=.>?@[]^_{}|~,`
(Agora answers error 1013 / `invalid_channel_name` otherwise). Web page recording (scene 1): the cname is only
a session label, up to 128 bytes, and a pool may give a template with `{uuid}` or `{n}` placeholders.
"""

from __future__ import annotations

import json
import re

CHANNEL_CHAR = re.compile(r"[a-zA-Z0-9 !#$%&()+\-:;<=.>?@\[\]^_{}|~,]")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
EXPANSION_BYTES = {"uuid": 32, "n": 10}  # longest expansion of each template placeholder


def problem(name: str, scene: int, *, template_allowed: bool = False) -> str | None:
    """Why Agora would refuse `name` as the cname of a pool of this scene, or None when it is fine."""
    placeholders = PLACEHOLDER.findall(name)
    if scene == 1:
        unknown = [p for p in placeholders if p not in EXPANSION_BYTES]
        if placeholders and not template_allowed:
            return "templates are not allowed in cnames; give one template as cname instead"
        if unknown:
            return f"unknown placeholder {{{unknown[0]}}}; only {{uuid}} and {{n}} are allowed"
        if "{" in (rest := PLACEHOLDER.sub("", name)) or "}" in rest:
            return "has an unmatched brace; a template uses {uuid} or {n}"
        if not 0 < (size := len(rest.encode()) + sum(EXPANSION_BYTES[p] for p in placeholders)) <= 128:
            return f"label must be 1 to 128 bytes (is {size} bytes at its longest)"
        return None
    if used := [p for p in placeholders if p in EXPANSION_BYTES]:
        return f"{{{used[0]}}} makes a template, which needs scene 1 (web page recording), not scene {scene}"
    if not 0 < (size := len(name.encode())) < 64:
        return f"must be 1 to 63 bytes for scene {scene} (is {size})"
    if bad := "".join(dict.fromkeys(c for c in name if not CHANNEL_CHAR.fullmatch(c))):
        return f"has characters Agora refuses in a channel name: {json.dumps(bad, ensure_ascii=False)}"
    return None
