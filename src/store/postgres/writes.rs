//! The SQL of the writes that are not group-committed (`group_writes.rs` has those).

/// The advisory lock that serialises the deletions of requests over the stored limit.
pub(super) const CLEANUP_LOCK: i64 = 0x5359_4e43_434c_4e55; // "SYNCCLNU"

/// Up to `$2` of the oldest finished requests beyond the newest `$1` finished ones, found by
/// walking the creation-time index from its start; how many are beyond comes from the kept
/// counts. (The picked ids are deleted as an array, one primary-key lookup each: joined
/// instead, a plan for an unknown number of them may hash the whole table.)
pub(super) const DELETE_OVER_LIMIT: &str = concat!(
    "WITH excess AS (
         SELECT GREATEST(COALESCE(sum(n), 0) - $1, 0) AS n FROM request_counts
         WHERE status IN ",
    finished_statuses!(),
    "),
     picked AS MATERIALIZED (
         SELECT id FROM requests WHERE created_at >= $3 AND status IN ",
    finished_statuses!(),
    " ORDER BY created_at LIMIT LEAST($2, (SELECT n FROM excess)) FOR UPDATE SKIP LOCKED)
     DELETE FROM requests WHERE id = ANY (ARRAY(SELECT id FROM picked))
     RETURNING created_at"
);

/// A sync request, `processing` by instance `$9`; nothing if its id or its idempotency key
/// is taken.
pub(super) const INSERT_SYNC_STARTED: &str =
    "INSERT INTO requests (id, mode, status, payload_hash, iterations, created_at,
                           idempotency_key, idempotency_fingerprint, traceparent, tracestate,
                           sync_owner)
     VALUES ($1, 'sync', 'processing', $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING
     RETURNING id";

/// A claimed job ended without an attempt, at `$4` (the instance's clock, as every time in a
/// record but the queue's due times).
pub(super) const GIVE_UP: &str =
    "UPDATE requests SET status = 'callback_failed', delivered_at = $4,
            next_attempt_at = NULL, callback_last_error = $3, error = $3,
            lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL
     WHERE id = $1 AND lease_token = $2 AND status <> 'cancelled'";

/// What making a request due needs to know of it, locked.
pub(super) const MAKE_DUE_OF: &str = concat!(
    "SELECT mode, status, lease_token IS NOT NULL, ",
    behind_earlier!(),
    " FROM requests WHERE id = $1 FOR UPDATE OF requests"
);

/// A queued request due now at the latest (the database's clock, as every due time).
pub(super) const MAKE_DUE: &str =
    "UPDATE requests SET next_attempt_at = LEAST(next_attempt_at, now())
     WHERE id = $1 AND next_attempt_at IS NOT NULL";

/// A parked request made due now, or at its `run_at` if that is later.
macro_rules! unparked_due {
    () => {
        "GREATEST(now(), COALESCE(run_at, now()))"
    };
}

/// Key `$1`'s first queued request made due, if it is parked: the one before it ended.
pub(super) const UNPARK_KEY: &str = concat!(
    "UPDATE requests SET next_attempt_at = ",
    unparked_due!(),
    " WHERE next_attempt_at = ",
    parked_at!(),
    " AND id = ",
    key_head!("id", "$1")
);

/// See `unpark_stranded!`.
pub(super) const UNPARK_STRANDED: &str = unpark_stranded!(parked_at!(), "id", "requests");

/// The expired claims of keyed requests no longer queued (a request cancelled while its
/// attempt was in flight keeps its claim until the attempt ends): an instance that died
/// would otherwise hold its key's next request back, on every instance, until retention
/// deleted it. Rows of `requests_ordering_claimed`, a handful.
pub(super) const RELEASE_ENDED_CLAIMS: &str =
    "UPDATE requests SET lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL
     WHERE ordering_key IS NOT NULL AND lease_token IS NOT NULL
       AND next_attempt_at IS NULL AND lease_expires_at < now()";

/// What a cancel needs to know of a request, locked.
pub(super) const CANCEL_OF: &str =
    "SELECT mode, status, lease_token IS NOT NULL, COALESCE(cancelled_in_flight, false)
     FROM requests WHERE id = $1 FOR UPDATE";

/// A request cancelled at `$2` (the instance's clock); its claim kept only when `$3` (an
/// attempt may be in flight, and is recorded under it if it lands). Its input is no longer
/// needed.
pub(super) const CANCEL: &str =
    "UPDATE requests SET status = 'cancelled', delivered_at = $2, next_attempt_at = NULL,
            data = NULL, cancelled_in_flight = $3,
            lease_owner = CASE WHEN $3 THEN lease_owner END,
            lease_expires_at = CASE WHEN $3 THEN lease_expires_at END,
            lease_token = CASE WHEN $3 THEN lease_token END
     WHERE id = $1";

/// What a redelivery needs to know of a request, locked.
pub(super) const REDELIVERY_OF: &str =
    "SELECT status, output_hash IS NOT NULL FROM requests WHERE id = $1 FOR UPDATE";

/// A request put back in the queue for a new round.
/// Queued again behind the queued requests of its `ordering_key`, if it has one: those
/// delivered since it ended stay delivered before it.
pub(super) const REDELIVER: &str = concat!(
    "UPDATE requests SET status = $2, delivered_at = NULL, error = NULL,
            next_attempt_at = CASE WHEN ordering_key IS NOT NULL AND EXISTS (
                                   SELECT 1 FROM requests AS queued
                                   WHERE queued.ordering_key = requests.ordering_key
                                     AND queued.next_attempt_at IS NOT NULL)
                              THEN ",
    parked_at!(),
    "::timestamptz ELSE now() END,
            round_start_attempts = callback_attempts, unrecorded_claims = 0,
            ordering_seq = CASE WHEN ordering_key IS NOT NULL
                                THEN nextval('requests_ordering_seq') END
     WHERE id = $1"
);

/// An owner's claims handed back (by the lease-owner index).
pub(super) const RELEASE: &str =
    "UPDATE requests SET lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL,
            unrecorded_claims = greatest(unrecorded_claims - 1, 0)
     WHERE lease_owner = $1";

/// Up to `$2` requests finished more than `$1` seconds ago, oldest first, by the creation-time
/// index; instances cleaning at the same time take different rows (SKIP LOCKED).
pub(super) const DELETE_EXPIRED: &str = concat!(
    "WITH picked AS MATERIALIZED (
                 SELECT id FROM requests
                 WHERE created_at >= $3 AND created_at < now() - make_interval(secs => $1)
                   AND status IN ",
    finished_statuses!(),
    " AND COALESCE(delivered_at, completed_at, created_at) < now() - make_interval(secs => $1)
                 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             DELETE FROM requests WHERE id = ANY (ARRAY(SELECT id FROM picked))
             RETURNING created_at"
);

/// Sync requests left `processing` by an instance that died: when `$4` (the instances'
/// marks can be trusted), one whose instance has not been seen for `$3` seconds (live ones
/// mark themselves in `instances` every second), once the request is that old too (an
/// instance starting up may serve before it first marks itself); and, whoever worked on it,
/// one more than `$1` seconds old.
pub(super) const FAIL_STALE_SYNC: &str =
    "UPDATE requests SET status = 'failed', completed_at = now(),
            error = $2, idempotency_key = NULL
     WHERE mode = 'sync' AND status = 'processing'
       AND (created_at < now() - make_interval(secs => $1)
            OR ($4 AND sync_owner IS NOT NULL
                AND created_at < now() - make_interval(secs => $3)
                AND NOT EXISTS (SELECT 1 FROM instances
                                WHERE owner = requests.sync_owner
                                  AND alive_at >= now() - make_interval(secs => $3))))";
