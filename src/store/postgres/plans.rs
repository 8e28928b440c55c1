//! PostgreSQL's hot statements and their plans: see `store::plans`.
//!
//! Each statement is prepared and explained with a generic plan (`plan_cache_mode =
//! force_generic_plan`), the plan PostgreSQL settles on for a statement run again and again
//! whatever its parameters, so no parameter values are needed (all are NULL) and nothing
//! is executed.

use sqlx::postgres::PgPool;

use super::claims::{
    CLAIM_PER_DESTINATION, CLAIM_PER_LISTED_DESTINATION, CLAIM_WINDOW, FIRST_DUE_PER_DESTINATION,
    FIRST_DUE_PER_LISTED_DESTINATION, NEXT_DUE_WINDOW_ROWS, RENEW_LEASES,
};
use super::group_writes::{FINISH_SYNC, INSERT_QUEUED, RECORD_ATTEMPTS, STORE_RESULTS};
use super::list::{COUNT_BY_STATUS, DIALECT, bind_list_params};
use super::queue_count::COUNT_QUEUE;
use super::writes::{
    CANCEL, CANCEL_OF, DELETE_EXPIRED, DELETE_OVER_LIMIT, FAIL_STALE_SYNC, GIVE_UP,
    INSERT_SYNC_STARTED, MAKE_DUE, MAKE_DUE_OF, REDELIVER, REDELIVERY_OF, RELEASE,
    RELEASE_ENDED_CLAIMS, UNPARK_KEY, UNPARK_STRANDED,
};
use super::{
    ATTEMPTS_OF, DUE_UNCLAIMED, KEY_HOLDER, POSITION_OF, PROBE_WRITE, RECORD_BY_ID, STATUS_COUNTS,
    VERSIONS,
};
use crate::store::StoreResult;
use crate::store::plans::{StatementPlan, hot_statements};

/// Every statement on a hot path, named by what it is for (and the list statements).
const FIXED: &[(&str, &str)] = &[
    ("submit: idempotency key", KEY_HOLDER),
    ("submit: async requests", INSERT_QUEUED),
    ("submit: queue size", COUNT_QUEUE),
    ("sync: processing", INSERT_SYNC_STARTED),
    ("sync: finished", FINISH_SYNC),
    ("claim: due window", CLAIM_WINDOW),
    ("claim: per destination", CLAIM_PER_DESTINATION),
    (
        "claim: per listed destination",
        CLAIM_PER_LISTED_DESTINATION,
    ),
    ("next due: window", NEXT_DUE_WINDOW_ROWS),
    ("next due: per destination", FIRST_DUE_PER_DESTINATION),
    (
        "next due: per listed destination",
        FIRST_DUE_PER_LISTED_DESTINATION,
    ),
    ("heartbeat", RENEW_LEASES),
    ("health: write probe", PROBE_WRITE),
    ("work results", STORE_RESULTS),
    ("attempts", RECORD_ATTEMPTS),
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
    ("stale sync requests", FAIL_STALE_SYNC),
    ("waiters: versions", VERSIONS),
    ("read a request", RECORD_BY_ID),
    ("read its attempts", ATTEMPTS_OF),
    ("list cursor", POSITION_OF),
    ("status counts", STATUS_COUNTS),
    ("destinations: held jobs", DUE_UNCLAIMED),
    ("list total by status", COUNT_BY_STATUS),
    ("retention: expired", DELETE_EXPIRED),
    ("retention: over the limit", DELETE_OVER_LIMIT),
];

/// The number of parameters (`$n`) a statement takes.
fn parameters(sql: &str) -> usize {
    let bytes = sql.as_bytes();
    let mut most = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let digits: String = sql[i + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse::<usize>() {
                most = most.max(n);
            }
            i += digits.len();
        }
        i += 1;
    }
    most
}

/// The generic plan of `sql`, with every parameter NULL.
async fn generic_plan(conn: &mut sqlx::PgConnection, sql: &str) -> StoreResult<Vec<String>> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PREPARE syncasync_explained AS {sql}"
    )))
    .execute(&mut *conn)
    .await?;
    let nulls = vec!["NULL"; parameters(sql)].join(", ");
    let execute = if nulls.is_empty() {
        "EXPLAIN EXECUTE syncasync_explained".to_string()
    } else {
        format!("EXPLAIN EXECUTE syncasync_explained({nulls})")
    };
    let steps: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(execute))
        .fetch_all(&mut *conn)
        .await?;
    sqlx::raw_sql("DEALLOCATE syncasync_explained")
        .execute(&mut *conn)
        .await?;
    Ok(steps)
}

/// The plan of every hot statement, on one connection of `pool`.
pub(super) async fn explain_hot(pool: &PgPool) -> StoreResult<Vec<StatementPlan>> {
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await?;
    let mut plans = Vec::new();
    for hot in hot_statements(FIXED, &DIALECT) {
        let steps = if hot.params.is_empty() {
            generic_plan(&mut conn, &hot.sql).await?
        } else {
            // A list statement is planned with its values every time it runs (it is never
            // prepared for reuse, see `list.rs`): explained the same way.
            let params = hot.params.clone();
            let explain = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {}", hot.sql)))
                .persistent(false);
            sqlx::raw_sql("SET plan_cache_mode = force_custom_plan")
                .execute(&mut *conn)
                .await?;
            let steps: Vec<String> = bind_list_params(explain, params)
                .fetch_all(&mut *conn)
                .await?;
            sqlx::raw_sql("SET plan_cache_mode = force_generic_plan")
                .execute(&mut *conn)
                .await?;
            steps
        };
        let scans_table = steps.iter().any(|step| {
            step.contains("Seq Scan on requests") || step.contains("Seq Scan on delivery_attempts")
        });
        // A list page's sort would order every row it matched. The claims sort the few
        // candidates they picked (at most the free workers), by design; and a list total is
        // planned with its values, so a sort there is the planner's choice for the rows those
        // values match (a bitmap scan and a sort of a few thousand, an index walk to the
        // count limit for more).
        let sorts = hot.is_list_page
            && steps
                .iter()
                .any(|step| step.trim_start().starts_with("->  Sort") || step.starts_with("Sort"));
        // `Index Cond: ((callback_host = $1) AND (status = $2))` (or a bitmap scan's
        // `Recheck Cond`): what the index walk is constrained by; a `Filter:` is checked row
        // by row.
        let conditions = steps
            .iter()
            .filter(|step| step.contains("Index Cond:") || step.contains("Recheck Cond:"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        // A statement planned with its values may rightly walk the newest requests and check
        // each row for a value most of them have (found at once); only a generic plan must
        // serve every filter from its index. (`tests/api/history.rs` times list pages with
        // rare values on a long history.)
        let planned_with_values = !hot.params.is_empty();
        plans.push(StatementPlan::of(
            hot,
            &steps,
            scans_table,
            sorts,
            &conditions,
            |conditions, column| {
                planned_with_values || conditions.contains(&format!("({column} = "))
            },
        ));
    }
    sqlx::raw_sql("RESET plan_cache_mode")
        .execute(&mut *conn)
        .await?;
    Ok(plans)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parameters_are_counted_by_the_highest_number() {
        assert_eq!(super::parameters("SELECT 1"), 0);
        assert_eq!(super::parameters("SELECT $1, $12, $3"), 12);
        assert_eq!(super::parameters("SELECT '$' || $2"), 2);
    }
}
