//! Integration tests: the real service on an ephemeral port with a fresh database (SQLite, or
//! PostgreSQL when `SYNCASYNC_TEST_POSTGRES_URL` is set), in process or as the binary in a
//! child process (`helpers::TestServer`), spoken to over HTTP, with callback receivers on
//! 127.0.0.1. One test binary (modules per feature) keeps the build to one link.

mod helpers;
mod history;
mod hostile;
mod isolation;
mod list_filters;

mod admin;
mod batch;
mod compat;
mod control;
mod dashboard;
mod delivery;
mod destination_controls;
mod durability;
mod group_commit;
mod guard;
mod idempotency;
mod lifecycle;
mod loadgen;
mod observability;
mod openapi;
mod ordering;
mod pacing;
mod priority;
mod receiver;
mod requests;
mod scale_out;
mod ssrf;
mod sync;
mod trace_context;
mod trace_export;
mod validation;
mod waiting;
