"""schemathesis hooks for the fuzz run (tests/fuzz/schemathesis.sh, via SCHEMATHESIS_HOOKS)."""
import re
import uuid

import schemathesis

# The document's rule for an Idempotency-Key (see src/http/idempotency.rs).
_VALID_KEY = re.compile(r'^(?:[\x21\x23-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])+")$')


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    # A key is state: the same key with another body is a 422 by design (the draft's rule).
    # A stateless generator reuses short strings ("null", "0") across bodies and would read
    # that 422 as a valid request refused, so each valid bare key is made unique; malformed
    # keys go as generated.
    headers = case.headers or {}
    for name in list(headers):
        key = headers[name]
        if name.lower() != "idempotency-key" or not isinstance(key, str) or not _VALID_KEY.match(key):
            continue
        unique = uuid.uuid4().hex
        headers[name] = f'"{unique}"' if key.startswith('"') else f"{key[:200]}-{unique}"
