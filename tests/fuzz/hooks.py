"""schemathesis hooks for the fuzz run (tests/fuzz/schemathesis.sh, via SCHEMATHESIS_HOOKS)."""
import re
import uuid

import schemathesis

# The document's rule for an Idempotency-Key (see src/http/idempotency.rs).
_VALID_KEY = re.compile(r'^(?:[\x21\x23-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])+")$')

# Longest wait a fuzzed request may ask for: the run checks the answer, not the patience.
_MAX_WAIT = 2


@schemathesis.hook
def map_headers(ctx, headers):
    if not headers:
        return headers
    for name in list(headers):
        value = headers[name]
        if not isinstance(value, str):
            continue
        if name.lower() == "idempotency-key" and _VALID_KEY.match(value):
            # A key is state: the same key with another body is a 422 by design. A stateless
            # generator reuses short strings ("null", "0") across bodies and would read that
            # 422 as a valid request refused, so each valid key is made unique.
            unique = uuid.uuid4().hex
            headers[name] = f'"{unique}"' if value.startswith('"') else f"{value[:200]}-{unique}"
        elif name.lower() == "prefer":
            headers[name] = re.sub(r"(?i)wait\s*=\s*\d+", f"wait={_MAX_WAIT}", value)
    return headers


# Filters of GET /requests that id_prefix is never combined with. The document says so in
# id_prefix's description (a 422 otherwise); OpenAPI has no way to state it as a rule.
_NOT_WITH_ID_PREFIX = ("mode", "status", "created_from", "created_to", "callback_host")


@schemathesis.hook
def map_query(ctx, query):
    if not query:
        return query
    if isinstance(query.get("wait"), int) and 0 <= query["wait"] <= 60:
        query["wait"] = min(query["wait"], _MAX_WAIT)
    if "id_prefix" in query:
        for name in _NOT_WITH_ID_PREFIX:
            query.pop(name, None)
    return query
