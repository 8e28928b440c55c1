"""The original's input rules, run by pydantic itself: what it answered to each case.

The original service validated its bodies with pydantic v2 (2.6, lax mode) under FastAPI,
which parsed the JSON with Python's `json` module and then validated the object. This script
does the same for every case below and prints, as one JSON array, the answer the original
gave: 200 with the `iterations` it read, or 422 with FastAPI's `detail`. tests/api/compat.rs
sends the same bodies to the service and compares.

The models are the original's rules as SPEC §2 states them. Two of them were the original's
own validators, whose wording is not pydantic's: the texts here are the service's, and the
test compares everything else about those errors (type, loc, input, ctx, url).

Run: python3 tests/compat/pydantic_cases.py  (needs pydantic==2.6.4)
"""

import json

import pydantic
from pydantic import BaseModel, Field, ValidationError, field_validator


class SyncRequest(BaseModel):
    data: str = Field(..., min_length=1, max_length=10000)
    iterations: int = Field(default=1000, ge=1, le=1000000)

    @field_validator("data")
    @classmethod
    def not_whitespace_only(cls, value):
        if not value.strip():
            raise ValueError("data must not be whitespace only")
        return value


class AsyncRequest(SyncRequest):
    callback_url: str = Field(..., max_length=2048)

    @field_validator("callback_url")
    @classmethod
    def http_or_https(cls, value):
        if not value.startswith(("http://", "https://")):
            raise ValueError("callback_url must start with http:// or https://")
        return value


class ListQuery(BaseModel):
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


ITERATIONS = [
    100, 100.0, 100.5, 1e3, True, False, None, [], {}, 0, -1, 1000000, 1000001, 2**40,
    "100", "100.0", "100.", "100.000", "0100.0", "+5.0", "1_000", "0_1", "1_000_000",
    "+100", "00100", "-5", "0", "-0", "0.0", "1000001", "99999999999999999999999",
    " 100 ", "100\n", "\t100", "100 ", "", " ", "+", "-", "+-1", "1e3", "1.0e2", "0x10",
    "1__000", "_100", "100_", "1_000.0", "100.5", "100.0.0", ".5", "1 000", "inf", "nan",
    "true", "１００", "٣", "+_1", "+_1_0", "-_1", "+__1", "+_", "+_1.0",
    "0" * 4298 + "12", "0" * 4299 + "12", "1" * 4301,
]

DATA = ["x", "", " ", "\t\n", "\u3000", 5, None, True, ["x"], "x" * 10000, "x" * 10001]

CALLBACK_URLS = [
    "http://127.0.0.1:1/cb", "https://127.0.0.1:1/cb", "HTTP://127.0.0.1:1/cb",
    "Https://127.0.0.1:1/cb", " http://127.0.0.1:1/cb", "ftp://127.0.0.1:1/cb",
    "127.0.0.1:1/cb", "", 5, None, ["http://127.0.0.1:1/cb"],
    "http://127.0.0.1:1/" + "a" * 2030,
]

QUERY = ["1", "1.0", "1000", "1001", "0", "-1", "abc", "1_0", " 5", "5.5", "", "1e2", "+_5",
         "0" * 4301 + "5"]


def body_case(model, body):
    if body is None:
        # FastAPI answered a `null` body as it did an empty one: the body is missing.
        return {"status": 422, "detail": [{
            "type": "missing", "loc": ["body"], "msg": "Field required", "input": None,
            "url": "https://errors.pydantic.dev/2.6/v/missing",
        }]}
    try:
        # As FastAPI validated a body: from attributes too, so a body that is not an object
        # is `model_attributes_type`.
        parsed = model.model_validate(body, from_attributes=True)
        return {"status": 200, "iterations": parsed.iterations}
    except ValidationError as error:
        return {"status": 422, "detail": fastapi_detail(error, "body")}


def fastapi_detail(error, part):
    """The errors as FastAPI wrote them: located in the request's part, each `ctx` value
    that is an exception written as {}, as its JSON encoder wrote one."""
    detail = []
    for item in error.errors(include_url=True):
        item = dict(item)
        item["loc"] = [part, *item["loc"]]
        if "ctx" in item:
            item["ctx"] = {
                key: ({} if isinstance(value, Exception) else value)
                for key, value in item["ctx"].items()
            }
        detail.append(item)
    return detail


def main():
    assert pydantic.VERSION == "2.6.4", f"the original used pydantic 2.6.4, not {pydantic.VERSION}"
    cases = []
    for iterations in ITERATIONS:
        body = {"data": "x", "iterations": iterations}
        cases.append({"path": "/sync", "body": body, **body_case(SyncRequest, body)})
    for data in DATA:
        body = {"data": data}
        cases.append({"path": "/sync", "body": body, **body_case(SyncRequest, body)})
    for body in [{}, {"iterations": 5}, {"data": "", "iterations": "abc"}, [1], "x", 5, None]:
        cases.append({"path": "/sync", "body": body, **body_case(SyncRequest, body)})
    for url in CALLBACK_URLS:
        body = {"data": "x", "callback_url": url}
        cases.append({"path": "/async", "body": body, **body_case(AsyncRequest, body)})
    cases.append({"path": "/async", "body": {"data": "x"}, **body_case(AsyncRequest, {"data": "x"})})
    for name in ["limit", "offset"]:
        for value in QUERY:
            try:
                ListQuery.model_validate({name: value}, from_attributes=True)
                answer = {"status": 200}
            except ValidationError as error:
                answer = {"status": 422, "detail": fastapi_detail(error, "query")}
            cases.append({"path": "/requests", "query": {name: value}, **answer})
    print(json.dumps(cases))


if __name__ == "__main__":
    main()
