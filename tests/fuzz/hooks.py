"""schemathesis hooks for the fuzz run (tests/fuzz/schemathesis.sh, via SCHEMATHESIS_HOOKS)."""
import datetime
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
    # Each cursor pages its own order (the descriptions of `before` and `after` say so; a
    # 422 otherwise): `after` an oldest-first list, `before` a newest-first one.
    if query.get("order") == "oldest":
        query.pop("before", None)
    else:
        query.pop("after", None)
    return query


# How far ahead a request may schedule its work: APP_MAX_SCHEDULE_DELAY_SECONDS as
# schemathesis.sh sets it. The document states it as a maximum of `delay_seconds`; for
# `run_at`, a time, it cannot: the bound moves with the clock.
_MAX_SCHEDULE = datetime.timedelta(seconds=30)


def _schedule_within_rules(item):
    """A generated body's schedule, made one the service takes: `run_at` or `delay_seconds`,
    not both (a rule between fields, in their descriptions), and `run_at` no further ahead
    than the bound."""
    if not isinstance(item, dict):
        return
    if item.get("run_at") is not None and item.get("delay_seconds") is not None:
        del item["run_at"]
    at = item.get("run_at")
    if isinstance(at, str):
        try:
            parsed = datetime.datetime.fromisoformat(at.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.timezone.utc)
        if parsed > datetime.datetime.now(datetime.timezone.utc) + _MAX_SCHEDULE - datetime.timedelta(seconds=5):
            del item["run_at"]


@schemathesis.hook
def map_body(ctx, body):
    if isinstance(body, dict):
        _schedule_within_rules(body)
        items = body.get("requests")
        for item in items if isinstance(items, list) else []:
            _schedule_within_rules(item)
    return body
