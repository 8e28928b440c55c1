-- W3C Trace Context (SPEC §12): the request's own span, as a `traceparent` value (a child of
-- its caller's, or the root of a trace it started), and its caller's `tracestate`. Every
-- callback attempt is sent as a child span of it. NULL on rows written before.
ALTER TABLE requests ADD COLUMN traceparent TEXT;
ALTER TABLE requests ADD COLUMN tracestate TEXT;
