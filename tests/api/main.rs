//! Integration tests: the real server on an ephemeral port, spoken to over HTTP.
