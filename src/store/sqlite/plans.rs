//! SQLite's hot statements and their plans (`EXPLAIN QUERY PLAN`): see `store::plans`.

use rusqlite::Connection;

use super::claims::{
    CLAIM_ONE, DESTINATION_DUE, DUE_WINDOW, FIRST_DESTINATION, NEXT_DESTINATION, NEXT_LEVEL,
    TOP_LEVEL,
};
use super::clock::{LAST_STAMP, STAMP};
use super::list::{COUNT_BY_STATUS, DIALECT};
use super::open::{COUNT_QUEUED, FAIL_ABANDONED_SYNC, RELEASE_ALL};
use super::writes::{
    CANCEL, CANCEL_OF, COUNT_FINISHED, DELETE_EXPIRED, DELETE_OLDEST_FINISHED, EXPIRED_LEASES_OF,
    FINISH_SYNC_STARTED, GIVE_UP, INSERT_ASYNC, INSERT_ATTEMPT, INSERT_SYNC_FINISHED,
    INSERT_SYNC_STARTED, KEY_HOLDER, MAKE_DUE, MAKE_DUE_OF, PROBE_DELETE, PROBE_INSERT,
    RECORD_ATTEMPT, REDELIVER, REDELIVERY_OF, RELEASE, RELEASE_CLAIM, RELEASE_ENDED_CLAIMS,
    RENEW_LEASE, SAVE_RESULT, UNPARK_KEY, UNPARK_STRANDED,
};
use super::{ATTEMPTS_OF, DUE_UNCLAIMED, POSITION_OF, RECORD_BY_ID, STATUS_COUNTS};
use crate::store::plans::{StatementPlan, hot_statements};

/// Every statement on a hot path, named by what it is for (and the list statements).
const FIXED: &[(&str, &str)] = &[
    ("submit: idempotency key", KEY_HOLDER),
    ("submit: async request", INSERT_ASYNC),
    ("sync: processing", INSERT_SYNC_STARTED),
    ("sync: finished", INSERT_SYNC_FINISHED),
    ("sync: finished, after processing", FINISH_SYNC_STARTED),
    ("claim: top priority level", TOP_LEVEL),
    ("claim: next priority level", NEXT_LEVEL),
    ("claim: due window", DUE_WINDOW),
    ("claim: first destination", FIRST_DESTINATION),
    ("claim: next destination", NEXT_DESTINATION),
    ("claim: a destination's due jobs", DESTINATION_DUE),
    ("claim: lease a job", CLAIM_ONE),
    ("heartbeat", RENEW_LEASE),
    ("heartbeat: expired leases", EXPIRED_LEASES_OF),
    ("heartbeat: release one", RELEASE_CLAIM),
    ("work result", SAVE_RESULT),
    ("attempt: request", RECORD_ATTEMPT),
    ("attempt: audit", INSERT_ATTEMPT),
    ("give up", GIVE_UP),
    ("redeliver: read", REDELIVERY_OF),
    ("redeliver: queue", REDELIVER),
    ("cancel: read", CANCEL_OF),
    ("cancel", CANCEL),
    ("retry now: read", MAKE_DUE_OF),
    ("retry now", MAKE_DUE),
    ("ordering: unpark a key's next", UNPARK_KEY),
    ("ordering: unpark stranded keys", UNPARK_STRANDED),
    ("ordering: release ended claims", RELEASE_ENDED_CLAIMS),
    ("release at shutdown", RELEASE),
    ("queue clock: stamp", STAMP),
    ("queue clock: last stamp", LAST_STAMP),
    ("health: write probe", PROBE_INSERT),
    ("health: write probe removed", PROBE_DELETE),
    ("start-up: release leases", RELEASE_ALL),
    ("start-up: fail abandoned sync", FAIL_ABANDONED_SYNC),
    ("start-up: queue size", COUNT_QUEUED),
    ("read a request", RECORD_BY_ID),
    ("read its attempts", ATTEMPTS_OF),
    ("list cursor", POSITION_OF),
    ("status counts", STATUS_COUNTS),
    ("destinations: held jobs", DUE_UNCLAIMED),
    ("list total by status", COUNT_BY_STATUS),
    ("retention: expired", DELETE_EXPIRED),
    ("retention: finished count", COUNT_FINISHED),
    ("retention: over the limit", DELETE_OLDEST_FINISHED),
];

/// The plan of every hot statement on `conn`.
pub(super) fn explain_hot(conn: &Connection) -> rusqlite::Result<Vec<StatementPlan>> {
    hot_statements(FIXED, &DIALECT)
        .into_iter()
        .map(|hot| {
            let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", hot.sql))?;
            // The plan does not depend on the values (the planner's stability guarantee is on,
            // see `open_connection`): every parameter is NULL.
            let nulls = vec![rusqlite::types::Null; explain.parameter_count()];
            let steps: Vec<String> = explain
                .query_map(rusqlite::params_from_iter(nulls), |row| {
                    row.get::<_, String>(3)
                })?
                .collect::<Result<_, _>>()?;
            // `SCAN t` alone reads the whole table; `SCAN t USING … INDEX` walks an index
            // (in order, to a LIMIT, or a partial index of the few rows it holds).
            let scans_table = steps
                .iter()
                .any(|step| step == "SCAN requests" || step == "SCAN delivery_attempts");
            // A page may sort each run of equal times by id as it walks (`RIGHT PART` or `LAST
            // TERM OF ORDER BY`: a few rows at a time, up to its limit); a count has no use for
            // any order beyond the index's.
            let sorts = steps.iter().any(|step| {
                step.contains("TEMP B-TREE FOR ORDER BY")
                    || (!hot.is_list_page
                        && step.contains("TEMP B-TREE FOR")
                        && step.contains("ORDER BY"))
            });
            // `SEARCH requests USING INDEX i (callback_host=? AND status=?)`: the columns in
            // parentheses are what the index walk is constrained by.
            let searches = steps
                .iter()
                .filter(|step| {
                    step.starts_with("SEARCH requests") || step.starts_with("SCAN requests")
                })
                .cloned()
                .collect::<Vec<_>>()
                .join("\n");
            Ok(StatementPlan::of(
                hot,
                &steps,
                scans_table,
                sorts,
                &searches,
                |conditions, column| conditions.contains(&format!("{column}=?")),
            ))
        })
        .collect()
}
