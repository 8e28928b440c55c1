//! The SQLite backend's own tests: the writer's protocol, claims and their cost, list plans.

use std::collections::HashSet;

use chrono::DateTime;
use rusqlite::{StatementStatus, params, params_from_iter};

use super::claims::{
    CLAIM_ONE, DESTINATION_DUE, DESTINATIONS_WALKED, DUE_WINDOW, FIRST_DESTINATION,
    NEXT_DESTINATION, NEXT_LEVEL, TOP_LEVEL, claim,
};
use super::list::{DIALECT, sql_value};
use super::rows::{from_millis, millis};
use super::writer::{Applied, Pending, Queue};
use super::writes::DELETE_EXPIRED;
use super::*;
use crate::delivery::destinations::Turn;
use crate::model::{Mode, Status};
use crate::store::due::millis_of;
use crate::store::page_sql;

const FULL: &str = "http://full:1";
const OTHER: &str = "http://other:2";

fn database() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open_connection(&dir.path().join("claims.db"), false).unwrap();
    migrate(&mut conn).unwrap();
    (dir, conn)
}

/// A database as a build with only the first `version` migrations left it, for a test of
/// what a later migration does to the rows it holds.
fn database_at_schema(version: usize) -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = open_connection(&dir.path().join("older.db"), false).unwrap();
    for sql in &super::open::MIGRATIONS[..version] {
        conn.execute_batch(sql).unwrap();
    }
    conn.pragma_update(None, "user_version", i64::try_from(version).unwrap())
        .unwrap();
    (dir, conn)
}

/// Queues `count` jobs for `destination`, due at `first_due`, `first_due + 1`, … (ms).
fn queue(conn: &Connection, destination: &str, count: i64, first_due: i64) {
    queue_at_priority(conn, destination, count, first_due, 0);
}

/// As [`queue`], of priority `level`. In the columns of every schema since 0014 (a test
/// queues jobs before a later migration), so without the `unfinished` flag of 0018: claims
/// do not read it, and no test lists these jobs by status.
fn queue_at_priority(conn: &Connection, destination: &str, count: i64, first_due: i64, level: i8) {
    let mut insert = conn
        .prepare(
            "INSERT INTO requests (id, mode, status, payload_hash, data, iterations,
                                   callback_url, created_at, next_attempt_at, destination,
                                   priority)
             VALUES (?1, 'async', 'pending', 'h', 'x', 1, ?2, 0, ?3, ?2, ?4)",
        )
        .unwrap();
    for i in 0..count {
        insert
            .execute(params![
                format!("{destination}/{}", first_due + i),
                destination,
                first_due + i,
                level
            ])
            .unwrap();
    }
}

/// SQLite's plan for one page of `filter`, a line per step.
fn query_plan(conn: &Connection, filter: &ListFilter) -> Vec<String> {
    let (sql, params) = page_sql(filter, &DIALECT);
    conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map(params_from_iter(params.iter().map(sql_value)), |row| {
            row.get::<_, String>(3)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Runs one page of `filter` and returns its ids and the virtual-machine steps it took.
fn page_steps(conn: &Connection, filter: &ListFilter) -> (Vec<String>, i32) {
    let (sql, params) = page_sql(filter, &DIALECT);
    let mut statement = conn.prepare(&sql).unwrap();
    let ids = statement
        .query_map(params_from_iter(params.iter().map(sql_value)), |row| {
            row.get::<_, String>("id")
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (ids, statement.get_status(StatementStatus::VmStep))
}

/// A page deep in 100k requests (by the `before` cursor) costs what the first page costs,
/// counted in SQLite's virtual-machine steps, not in wall-clock time; and the statement
/// searches an index rather than scanning the table, with or without a status filter.
#[test]
fn a_deep_keyset_page_costs_what_the_first_costs() {
    let (_dir, conn) = database();
    const ROWS: i64 = 100_000;
    conn.execute_batch("BEGIN").unwrap();
    {
        let mut insert = conn
            .prepare(
                "INSERT INTO requests (id, mode, status, payload_hash, iterations, created_at)
                 VALUES (?1, 'sync', ?2, 'h', 1, ?3)",
            )
            .unwrap();
        for i in 0..ROWS {
            // Pairs share a millisecond, so the cursor's tie-break on id is exercised.
            let status = if i % 10 == 0 { "failed" } else { "completed" };
            insert
                .execute(params![format!("{i:08}"), status, i / 2])
                .unwrap();
        }
    }
    conn.execute_batch("COMMIT; ANALYZE").unwrap();
    let first = ListFilter {
        limit: 50,
        ..ListFilter::default()
    };
    let (first_ids, first_steps) = page_steps(&conn, &first);
    assert_eq!(first_ids[0], format!("{:08}", ROWS - 1));
    // After the 99 000th newest, 00001000, which shares created_at 500 with 00001001
    // (newer, so not on the page).
    let deep = ListFilter {
        cursor: Some(Position {
            created_at: from_millis(500),
            id: "00001000".into(),
        }),
        ..first.clone()
    };
    let (deep_ids, deep_steps) = page_steps(&conn, &deep);
    let expected: Vec<String> = (950..1000).rev().map(|i| format!("{i:08}")).collect();
    assert_eq!(deep_ids, expected);
    assert!(
        deep_steps <= first_steps * 2,
        "deep page: {deep_steps} steps, first page: {first_steps}"
    );
    // The measure means something: the same depth by offset walks every row before it.
    let by_offset = ListFilter {
        offset: 99_000,
        ..first.clone()
    };
    let (offset_ids, offset_steps) = page_steps(&conn, &by_offset);
    assert_eq!(offset_ids, expected);
    assert!(
        offset_steps > deep_steps * 100,
        "{offset_steps} vs {deep_steps}"
    );

    // An id prefix, short or long, is a range of the primary key walked from its end: a
    // page costs what a page costs, however many ids the prefix matches.
    for prefix in ["0", "00001", "000012", "00001234"] {
        let filter = ListFilter {
            id_prefix: Some(prefix.into()),
            ..first.clone()
        };
        let plan = query_plan(&conn, &filter).join("; ");
        assert!(
            plan.contains("sqlite_autoindex_requests_1") && !plan.contains("TEMP B-TREE"),
            "{prefix}: {plan}"
        );
        let (ids, steps) = page_steps(&conn, &filter);
        assert!(
            !ids.is_empty() && ids.iter().all(|id| id.starts_with(prefix)),
            "{prefix}: {ids:?}"
        );
        let mut newest_first = ids.clone();
        newest_first.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(ids, newest_first, "{prefix}: by id, newest first");
        assert!(steps <= first_steps * 2, "{prefix}: {steps} steps");
    }

    for status in [None, Some(Status::Failed)] {
        let filter = ListFilter {
            status,
            ..deep.clone()
        };
        let plan = query_plan(&conn, &filter).join("; ");
        assert!(
            plan.contains("SEARCH requests USING INDEX") && plan.contains("created_at<"),
            "{status:?}: {plan}"
        );
        let (ids, steps) = page_steps(&conn, &filter);
        assert_eq!(ids.len(), 50);
        assert!(steps <= first_steps * 2, "{status:?}: {steps} steps");
    }
}

fn rooms(limited: &[(&str, u32)], held: &[&str]) -> Rooms {
    Rooms {
        default: 10,
        limited: limited.iter().map(|(d, r)| (d.to_string(), *r)).collect(),
        held: held.iter().map(|d| d.to_string()).collect(),
        overdue: Duration::from_secs(60),
        ..Rooms::default()
    }
}

/// What one level of priority is worth in the tests' claims.
const STEP: Duration = Duration::from_secs(60);

fn claimed_ids(conn: &Connection, limit: u32, rooms: &Rooms) -> Vec<String> {
    claim(
        conn,
        "test",
        limit,
        (Duration::from_secs(30), STEP),
        rooms,
        (now(), &mut String::new()),
    )
    .unwrap()
    .into_iter()
    .map(|job| job.id)
    .collect()
}

/// Virtual-machine steps spent so far by every statement a claim or a look for the next
/// due time runs: a count of the work done that does not depend on the machine's speed.
fn steps(conn: &Connection) -> i32 {
    [
        TOP_LEVEL,
        NEXT_LEVEL,
        DUE_WINDOW,
        FIRST_DESTINATION,
        NEXT_DESTINATION,
        DESTINATION_DUE,
        CLAIM_ONE,
    ]
    .iter()
    .map(|sql| {
        conn.prepare_cached(sql)
            .unwrap()
            .get_status(StatementStatus::VmStep)
    })
    .sum()
}

/// A write the database refuses, as a constraint or an I/O error would.
struct Broken;

impl Write for Broken {
    type Output = ();

    fn apply(&self, _tx: &rusqlite::Transaction<'_>, _queue: &mut Queue) -> Applied<()> {
        Err(rusqlite::Error::InvalidQuery)
    }
}

/// `write` as the writer receives it, and the channel its caller waits on.
fn pending<W: Write>(write: W) -> (Box<dyn Pending>, oneshot::Receiver<StoreResult<W::Output>>) {
    let (reply, answer) = oneshot::channel();
    let Message::Write(pending) = Message::write(write, reply) else {
        panic!("a write became another message");
    };
    (pending, answer)
}

fn writer(conn: Connection, queue_capacity: u64) -> Writer {
    Writer {
        conn,
        queue_size: Arc::new(AtomicU64::new(0)),
        queue_capacity,
        wal: std::path::PathBuf::new(),
        wal_looked_at: std::time::Instant::now(),
        clock: QueueClock::starting_at(now()),
        stamped_at: None,
        walk_from: String::new(),
    }
}

/// The wall clock's time, as the queue's clock starts.
fn now() -> i64 {
    Utc::now().timestamp_millis()
}

fn async_request(id: &str) -> NewAsyncRequest {
    NewAsyncRequest {
        request: NewRequest {
            id: id.into(),
            payload_hash: "h".into(),
            iterations: 1,
            created_at: Utc::now(),
            idempotency: None,
            trace: None,
        },
        data: "x".into(),
        callback_url: OTHER.into(),
        destination: OTHER.into(),
        controls: Default::default(),
        ordering_key: None,
    }
}

/// Each caller is answered with its own write's kind of answer (the channel's type is the
/// write's `Output`, so another kind cannot be sent); a write the database refuses fails
/// alone, after its batch is retried write by write; a refusal of one write (the queue is
/// full) is an answer, not a failure of the batch.
#[test]
fn each_write_is_answered_in_its_own_kind_and_a_bad_one_fails_alone() {
    let (_dir, conn) = database();
    let mut writer = writer(conn, 1);
    let (first, first_answer) = pending(SubmitAsync(async_request("first")));
    let (broken, broken_answer) = pending(Broken);
    let (over, over_answer) = pending(SubmitAsync(async_request("over the bound")));
    let (release, release_answer) = pending(Release {
        owner: "nobody".into(),
    });
    writer.commit_batch(&mut vec![first, broken, over, release]);

    let submitted: Submitted = first_answer.blocking_recv().unwrap().unwrap();
    assert_eq!(submitted, Submitted::Created);
    assert!(matches!(
        broken_answer.blocking_recv().unwrap(),
        Err(StoreError::Sqlite(_))
    ));
    assert!(matches!(
        over_answer.blocking_recv().unwrap(),
        Err(StoreError::QueueFull)
    ));
    let released: u64 = release_answer.blocking_recv().unwrap().unwrap();
    assert_eq!(released, 0);
    assert_eq!(writer.queue_size.load(Ordering::Relaxed), 1);
    let stored: i64 = writer
        .conn
        .query_row("SELECT count(*) FROM requests", [], |row| row.get(0))
        .unwrap();
    assert_eq!(stored, 1, "only the first submission fit");
}

/// The temporary files SQLite holds open in this process (it unlinks each as it creates it,
/// so they are seen only through the descriptors): `etilqs_…`, SQLite's prefix.
fn open_temporary_files() -> HashSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.contains("etilqs_"))
        .collect()
}

/// A write that answers which temporary files are open in the middle of its batch: a
/// statement journal spilled to disk stays open until the transaction ends.
struct LookForTemporaryFiles;

impl Write for LookForTemporaryFiles {
    type Output = HashSet<String>;

    fn apply(&self, _tx: &rusqlite::Transaction<'_>, _queue: &mut Queue) -> Applied<Self::Output> {
        Ok(Ok(open_temporary_files()))
    }
}

/// The temporary files [`LookForTemporaryFiles`] saw in its batch that were not open
/// `before` it.
fn opened_since(
    before: &HashSet<String>,
    seen: oneshot::Receiver<StoreResult<HashSet<String>>>,
) -> Vec<String> {
    let seen = seen.blocking_recv().unwrap().unwrap();
    seen.difference(before).cloned().collect()
}

/// The writer's batches need no temporary file: a statement that may fail halfway copies the
/// pages it changes to a statement journal, which SQLite writes to a file of its own once it
/// passes 64 KiB (the claim of a batch of jobs does), unless temporary storage is in memory.
/// Under async load those files took nine times the writes the WAL did; where /var/tmp is
/// read-only or full, they would fail every batch.
#[test]
fn a_batch_of_submissions_and_claims_writes_no_temporary_file() {
    let (_dir, conn) = database();
    let mut writer = writer(conn, 100_000);
    // The descriptors are the whole test process's: a file another test's connection holds
    // at that instant would be seen too. A spilled journal is seen on every try; a passer-by
    // on all three is not.
    let mut seen_each_time = Vec::new();
    for round in 0..3 {
        let mut batch = Vec::new();
        for n in 0..300 {
            let id = format!("job-{round}-{n}");
            batch.push(pending(SubmitAsync(async_request(&id))).0);
        }
        writer.commit_batch(&mut batch);
        let before = open_temporary_files();
        let (claim, claimed) = pending(Claim {
            owner: "test".into(),
            limit: 300,
            lease: Duration::from_secs(30),
            priority_step: STEP,
            rooms: Rooms {
                default: 300,
                ..rooms(&[], &[])
            },
        });
        let (submit, _) = pending(SubmitAsync(async_request(&format!("one more {round}"))));
        let (look, seen) = pending(LookForTemporaryFiles);
        writer.commit_batch(&mut vec![submit, claim, look]);
        assert_eq!(claimed.blocking_recv().unwrap().unwrap().len(), 300);
        let opened = opened_since(&before, seen);
        if opened.is_empty() {
            return;
        }
        seen_each_time.push(opened);
    }
    panic!("every batch opened temporary files: {seen_each_time:?}");
}

/// A write whose caller stopped waiting (a client hung up) is still made.
#[test]
fn a_write_stands_when_its_caller_is_gone() {
    let (_dir, conn) = database();
    let mut writer = writer(conn, 10);
    let (write, answer) = pending(SubmitAsync(async_request("orphan")));
    drop(answer);
    writer.commit_batch(&mut vec![write]);
    let stored: i64 = writer
        .conn
        .query_row(
            "SELECT count(*) FROM requests WHERE id = 'orphan'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(stored, 1);
    assert_eq!(writer.queue_size.load(Ordering::Relaxed), 1);
}

/// A claim's limit changes with every claim (the free slots); each change must not cost a
/// parse and a plan (it once took a third of the writer's CPU).
#[test]
fn a_claim_is_not_prepared_again_when_its_limit_changes() {
    let (_dir, conn) = database();
    queue(&conn, OTHER, 30, 1);
    for limit in 1..=20 {
        claim(
            &conn,
            "test",
            limit,
            (Duration::ZERO, STEP),
            &rooms(&[], &[]),
            (now(), &mut String::new()),
        )
        .unwrap();
    }
    for sql in [DUE_WINDOW, CLAIM_ONE] {
        let statement = conn.prepare_cached(sql).unwrap();
        assert_eq!(statement.get_status(StatementStatus::RePrepare), 0, "{sql}");
    }
}

/// Within each destination's room, in turns: each destination's first due job, then each
/// one's second, in due order within a turn.
#[test]
fn a_claim_takes_due_jobs_in_turns_within_each_destinations_room() {
    let (_dir, conn) = database();
    queue(&conn, FULL, 5, 1);
    queue(&conn, OTHER, 2, 2);
    let ids = claimed_ids(&conn, 10, &rooms(&[(FULL, 2)], &[]));
    assert_eq!(
        ids,
        [
            "http://full:1/1",
            "http://other:2/2",
            "http://full:1/2",
            "http://other:2/3"
        ]
    );
    // Leased now: the next claim passes them over.
    let ids = claimed_ids(&conn, 1, &rooms(&[(FULL, 1)], &[]));
    assert_eq!(ids, ["http://full:1/3"]);
}

/// Among one destination's due jobs a higher priority goes first, each level worth `STEP`
/// of waiting: a job of priority 0 due more than ten steps before one of priority 10 still
/// goes ahead of it.
#[test]
fn a_claim_takes_higher_priorities_first_unless_a_lower_one_waited_longer() {
    let (_dir, conn) = database();
    let now = now();
    let step = millis_of(STEP);
    queue_at_priority(&conn, OTHER, 2, now - 1_000, -3);
    queue_at_priority(&conn, OTHER, 2, now - 2_000, 0);
    queue_at_priority(&conn, OTHER, 2, now - 500, 10);
    queue_at_priority(&conn, OTHER, 1, now - 10 * step - 3_000, 0);
    queue_at_priority(&conn, OTHER, 1, now + 60_000, 10);
    let ids = claimed_ids(&conn, 10, &rooms(&[], &[]));
    let expected = [
        now - 10 * step - 3_000,
        now - 500,
        now - 499,
        now - 2_000,
        now - 1_999,
        now - 1_000,
        now - 999,
    ]
    .map(|due| format!("{OTHER}/{due}"));
    assert_eq!(ids, expected, "not yet due: never, whatever its priority");
}

/// Between destinations, turns come before priority and due order: a destination that had
/// more of the workers' time lately waits for one that had less, whatever its jobs'
/// priority or due time (any caller may ask for priority 10).
#[test]
fn a_destination_that_had_less_of_the_workers_time_lately_goes_first() {
    let (_dir, conn) = database();
    let now = now();
    queue_at_priority(&conn, FULL, 5, now - 60_000, 10);
    queue(&conn, OTHER, 2, now - 1_000);
    let busy = Rooms {
        turns: vec![(
            FULL.to_string(),
            Turn {
                first: 5,
                per_job: 10,
            },
        )],
        ..rooms(&[], &[])
    };
    let ids = claimed_ids(&conn, 3, &busy);
    assert_eq!(
        ids,
        [
            format!("{OTHER}/{}", now - 1_000),
            format!("{FULL}/{}", now - 60_000),
            format!("{OTHER}/{}", now - 999),
        ],
        "turns 0 ms, 5 ms (its first, after 5 ms of the workers' time lately), 10 ms"
    );
}

/// A proven destination's job behind other destinations' backlogs (more due rows than one
/// claim reads) gets its turn: it is looked up on its own. One that is not proven waits
/// until its jobs are among the first due rows.
#[test]
fn a_proven_destination_behind_the_backlogs_gets_its_turn() {
    let (_dir, conn) = database();
    let now = now();
    for backlog in ["http://a:1", "http://b:1", "http://c:1"] {
        queue(&conn, backlog, 100, now - 60_000);
    }
    queue(&conn, OTHER, 1, now - 1_000);
    let busy = |d: &str| {
        (
            d.to_string(),
            Turn {
                first: 900,
                per_job: 450,
            },
        )
    };
    let unproven = Rooms {
        turns: ["http://a:1", "http://b:1", "http://c:1"]
            .map(busy)
            .to_vec(),
        ..rooms(&[], &[])
    };
    let ids = claimed_ids(&conn, 1, &unproven);
    assert_eq!(ids, [format!("http://a:1/{}", now - 60_000)], "unseen");
    let proven = Rooms {
        reserved: vec![OTHER.to_string()],
        look_up: vec![OTHER.to_string()],
        ..unproven
    };
    let ids = claimed_ids(&conn, 1, &proven);
    assert_eq!(ids, [format!("{OTHER}/{}", now - 1_000)]);
}

/// A full destination's backlog in front makes the claim look destination by destination;
/// it keeps the same order there, within each destination too.
#[test]
fn a_claim_past_a_backlog_keeps_the_priority_order() {
    let (_dir, conn) = database();
    let now = now();
    queue(&conn, FULL, 200, now - 100_000);
    queue_at_priority(&conn, OTHER, 3, now - 5_000, 0);
    queue_at_priority(&conn, OTHER, 2, now - 1_000, 5);
    let ids = claimed_ids(&conn, 3, &rooms(&[(FULL, 0), (OTHER, 3)], &[]));
    assert_eq!(
        ids,
        [
            format!("{OTHER}/{}", now - 1_000),
            format!("{OTHER}/{}", now - 999),
            format!("{OTHER}/{}", now - 5_000),
        ]
    );
}

#[test]
fn a_held_destination_gives_only_jobs_overdue_by_the_longest_cool_down() {
    let (_dir, conn) = database();
    let now = millis(Utc::now());
    queue(&conn, FULL, 1, now - 120_000);
    queue(&conn, FULL, 1, now - 1_000);
    let ids = claimed_ids(&conn, 10, &rooms(&[], &[FULL]));
    assert_eq!(ids, [format!("http://full:1/{}", now - 120_000)]);
}

#[test]
fn jobs_behind_a_full_destinations_backlog_are_found_without_walking_it() {
    for (limited, held) in [(vec![(FULL, 0)], vec![]), (vec![], vec![FULL])] {
        let (_dir, conn) = database();
        let now = millis(Utc::now());
        let backlog = 3_000;
        queue(&conn, FULL, backlog, now - 10_000);
        queue(&conn, OTHER, 2, now - 1_000);
        let rooms = rooms(&limited, &held);
        let before = steps(&conn);
        let ids = claimed_ids(&conn, 4, &rooms);
        assert_eq!(
            ids,
            [
                format!("http://other:2/{}", now - 1_000),
                format!("http://other:2/{}", now - 999)
            ]
        );
        let spent = steps(&conn) - before;
        assert!(
            spent < 3_000,
            "{spent} steps to claim past a backlog of {backlog}"
        );
    }
}

/// Up to four jobs claimed at `now`, a walk over the destinations going on from `walk_from`.
fn claim_walking(conn: &Connection, rooms: &Rooms, now: i64, walk_from: &mut String) -> Vec<Job> {
    let lease = (Duration::from_secs(30), STEP);
    claim(conn, "test", 4, lease, rooms, (now, walk_from)).unwrap()
}

/// Behind a held backlog, with thousands of destinations whose jobs are scheduled for later,
/// a claim walks a bounded number of destinations, the next claim going on from there: each
/// claim's cost stays bounded (it runs on the writer, which every write waits for), and the
/// jobs behind are still found, within a few claims, wrapping round past the last name. A
/// look for the next due time walks as many, and answers "look again shortly".
#[test]
fn a_claim_walks_a_bounded_number_of_destinations_and_the_next_goes_on() {
    let (_dir, conn) = database();
    let now = now();
    queue(&conn, FULL, 1_000, now - 10_000);
    conn.execute_batch("BEGIN").unwrap();
    let scheduled: usize = 2_000;
    for i in 0..scheduled {
        queue(&conn, &format!("http://d{i:05}:1"), 1, now + 3_600_000);
    }
    conn.execute_batch("COMMIT").unwrap();
    // Sorts after every scheduled one, and before the held one.
    let behind = "http://e:1";
    queue(&conn, behind, 1, now - 1_000);
    let rooms = rooms(&[], &[FULL]);
    // Looking for the next due time walks as far, and says to look again soon.
    let before = steps(&conn);
    assert_eq!(
        next_due(&conn, "test", &rooms, now).unwrap(),
        Some(now + 100)
    );
    let spent = steps(&conn) - before;
    assert!(
        spent < 15_000,
        "{spent} steps to look for the next due time"
    );

    let mut walk_from = String::new();
    let mut found = None;
    let mut most_steps = 0;
    for attempt in 1..=20 {
        let before = steps(&conn);
        let jobs = claim_walking(&conn, &rooms, now, &mut walk_from);
        most_steps = most_steps.max(steps(&conn) - before);
        if let Some(job) = jobs.first() {
            assert_eq!(job.destination, behind);
            found = Some(attempt);
            break;
        }
    }
    let walks = scheduled.div_ceil(DESTINATIONS_WALKED);
    assert_eq!(found, Some(walks), "found on the walk that reaches it");
    // 256 destinations: about 10,000 steps; all 2,000 would take about 70,000.
    assert!(most_steps < 15_000, "{most_steps} steps in one claim");

    // Past the last name, the walk goes on from the first.
    queue(&conn, "http://a:1", 1, now - 1_000);
    walk_from = "http://zzz:1".into();
    let jobs = claim_walking(&conn, &rooms, now, &mut walk_from);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].destination, "http://a:1");
}

/// A retention pass walks the unfinished requests at the start of the creation-time index
/// once, not once per chunk: each chunk starts where the last one reached. (From the start
/// each time, 30,000 queued requests created before 1,500 expired ones cost every chunk a
/// walk over them, on the writer.)
#[test]
fn a_retention_pass_walks_the_unfinished_requests_before_it_once() {
    let (_dir, conn) = database();
    let mut insert = conn
        .prepare(
            "INSERT INTO requests (id, mode, status, payload_hash, data, iterations,
                                   callback_url, created_at, next_attempt_at, delivered_at,
                                   destination, unfinished)
             VALUES (?1, 'async', ?2, 'h', 'x', 1, ?3, ?4, ?5, ?6, ?3,
                     CASE ?2 WHEN 'pending' THEN 1 END)",
        )
        .unwrap();
    let far = now() + 86_400_000;
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..30_000 {
        let id = format!("queued {i:05}");
        insert
            .execute(params![id, "pending", OTHER, i, far, None::<i64>])
            .unwrap();
    }
    for i in 0..1_500 {
        let id = format!("finished {i:05}");
        let created = 100_000 + i;
        insert
            .execute(params![
                id,
                "callback_success",
                OTHER,
                created,
                None::<i64>,
                created
            ])
            .unwrap();
    }
    drop(insert);
    conn.execute_batch("COMMIT").unwrap();
    let mut writer = writer(conn, u64::MAX);
    let mut from = DateTime::UNIX_EPOCH;
    let mut chunks = Vec::new();
    loop {
        let before = writer
            .conn
            .prepare_cached(DELETE_EXPIRED)
            .unwrap()
            .get_status(StatementStatus::VmStep);
        let (write, answer) = pending(DeleteExpired {
            cutoff: from_millis(1_000_000),
            chunk: 500,
            from,
        });
        writer.commit_batch(&mut vec![write]);
        let swept = answer.blocking_recv().unwrap().unwrap();
        let spent = writer
            .conn
            .prepare_cached(DELETE_EXPIRED)
            .unwrap()
            .get_status(StatementStatus::VmStep)
            - before;
        chunks.push((swept.deleted, spent));
        match swept.reached {
            Some(reached) if swept.deleted == 500 => from = reached,
            _ => break,
        }
    }
    let deleted: u64 = chunks.iter().map(|(d, _)| d).sum();
    assert_eq!(deleted, 1_500, "{chunks:?}");
    let (first, later) = (chunks[0].1, chunks[1].1);
    assert!(
        later * 2 < first,
        "later chunks walk the queued ones again: {chunks:?}"
    );
}

/// Pages the connection has fetched (from its cache or the file) so far.
fn pages_fetched(conn: &Connection) -> i64 {
    use rusqlite::ffi;
    let mut total = 0;
    for op in [
        ffi::SQLITE_DBSTATUS_CACHE_HIT,
        ffi::SQLITE_DBSTATUS_CACHE_MISS,
    ] {
        let (mut current, mut highest) = (0, 0);
        // SAFETY: the handle is the open connection's, used on this thread only, and the
        // out-pointers are to locals that outlive the call.
        let rc =
            unsafe { ffi::sqlite3_db_status(conn.handle(), op, &mut current, &mut highest, 0) };
        assert_eq!(rc, ffi::SQLITE_OK);
        total += i64::from(current);
    }
    total
}

/// A claim with many free workers reads a window of thousands of due rows; when they are a
/// held destination's backlog (an open breaker in front of fresh jobs, as a hung receiver
/// leaves it), passing each over must cost its index entry, not a seek into the table (a
/// soak at 1,000/s slowed by a third as such a backlog grew).
#[test]
fn passing_over_a_held_backlog_reads_the_due_index_not_the_table() {
    let (_dir, conn) = database();
    let now = millis(Utc::now());
    let backlog = 3_000;
    // As in a database with a history, each queued row sits among finished ones, so that
    // the table rows of consecutive due rows are on different pages.
    let mut finished = conn
        .prepare(
            "INSERT INTO requests (id, mode, status, payload_hash, iterations, created_at)
             VALUES (?1, 'sync', 'completed', 'h', 1, 0)",
        )
        .unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..backlog {
        queue(&conn, FULL, 1, now - 10_000 + i);
        for j in 0..30 {
            finished.execute([format!("finished/{i}/{j}")]).unwrap();
        }
    }
    conn.execute_batch("COMMIT").unwrap();
    drop(finished);
    queue(&conn, OTHER, 2, now - 1_000);
    let before = pages_fetched(&conn);
    let ids = claimed_ids(&conn, 500, &rooms(&[], &[FULL]));
    assert_eq!(ids.len(), 2, "{ids:?}");
    let fetched = pages_fetched(&conn) - before;
    // The index entries of 3,000 rows fit in a few dozen pages; a seek per row into the
    // table would fetch thousands.
    assert!(
        fetched < backlog / 4,
        "{fetched} pages fetched to claim past a backlog of {backlog}"
    );
}

#[test]
fn the_next_due_time_is_that_of_a_destination_with_room() {
    let (_dir, conn) = database();
    let now = millis(Utc::now());
    queue(&conn, FULL, 3_000, 1);
    assert_eq!(
        next_due(&conn, "test", &rooms(&[(FULL, 0)], &[]), now).unwrap(),
        None
    );
    queue(&conn, OTHER, 1, now + 5_000);
    let before = steps(&conn);
    assert_eq!(
        next_due(&conn, "test", &rooms(&[(FULL, 0)], &[]), now).unwrap(),
        Some(now + 5_000)
    );
    let spent = steps(&conn) - before;
    assert!(
        spent < 3_000,
        "{spent} steps to look past a backlog of 3000"
    );
    // Held, the backlog counts from when it is overdue.
    assert_eq!(
        next_due(&conn, "test", &rooms(&[], &[FULL]), now).unwrap(),
        Some(1 + 60_000)
    );
    // With room and not held, its first job is due now.
    assert_eq!(
        next_due(&conn, "test", &rooms(&[], &[]), now).unwrap(),
        Some(1)
    );
}

/// A database whose pages are 64 KiB, with temporary storage in files: a statement journal,
/// which holds a copy of each page a statement changes, passes its 64 KiB spill with its
/// first page, and so opens a file that [`LookForTemporaryFiles`] sees.
fn database_showing_statement_journals() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journals.db");
    let fresh = Connection::open(&path).unwrap();
    fresh
        .execute_batch("PRAGMA page_size = 65536; CREATE TABLE sized (x); DROP TABLE sized;")
        .unwrap();
    drop(fresh);
    let mut conn = open_connection(&path, false).unwrap();
    migrate(&mut conn).unwrap();
    conn.pragma_update(None, "temp_store", "FILE").unwrap();
    (dir, conn)
}

/// The writer's hot statements keep no statement journal: a journal copies every page a
/// statement changes (a fifth of the writer's time under async load, measured), to undo that
/// statement alone, which the writer never does (a failed statement rolls its whole batch
/// back). Submissions, a claim, a result, an attempt and both ends of a sync request, in
/// one batch, as under load. (A function call in a statement may need a journal too:
/// `randomblob()` in the claim's update did.)
#[test]
fn the_writers_hot_statements_keep_no_statement_journal() {
    let (_dir, conn) = database_showing_statement_journals();
    let mut writer = writer(conn, 100_000);
    let mut batch = Vec::new();
    for n in 0..20 {
        batch.push(pending(SubmitAsync(async_request(&format!("queued {n}")))).0);
    }
    writer.commit_batch(&mut batch);
    let claim = || {
        pending(Claim {
            owner: "test".into(),
            limit: 2,
            lease: Duration::from_secs(30),
            priority_step: STEP,
            rooms: Rooms {
                default: 10,
                ..rooms(&[], &[])
            },
        })
    };
    let (first_claim, claimed) = claim();
    writer.commit_batch(&mut vec![first_claim]);
    let jobs = claimed.blocking_recv().unwrap().unwrap();
    assert_eq!(jobs.len(), 2);

    let sync = |id: &str| NewRequest {
        id: id.into(),
        ..async_request(id).request
    };
    let result = |id: &str| WorkResult {
        request_id: id.into(),
        input_hash: "in".into(),
        output_hash: "out".into(),
        iterations: 1,
        processing_time_ms: 0.1,
    };
    let keyed = |id: &str| NewRequest {
        idempotency: Some(crate::store::IdempotencyKey {
            key: format!("key of {id}"),
            fingerprint: "f".into(),
        }),
        ..sync(id)
    };
    let (second_claim, claimed_again) = claim();
    let mut batch = vec![
        pending(SubmitAsync(async_request("one more"))).0,
        pending(SubmitAsync(NewAsyncRequest {
            request: keyed("keyed async"),
            ..async_request("keyed async")
        }))
        .0,
        pending(SyncStarted(keyed("slow sync"))).0,
        second_claim,
        pending(SaveResult {
            id: jobs[0].id.clone(),
            token: jobs[0].token.clone(),
            work: FinishedWork::now(result(&jobs[0].id)),
        })
        .0,
        pending(RecordAttempt {
            id: jobs[1].id.clone(),
            owner: "test".into(),
            token: jobs[1].token.clone(),
            attempt: DeliveryAttempt {
                attempt: 1,
                started_at: Utc::now(),
                duration_ms: 1.0,
                status_code: Some(200),
                error: None,
                response_body: None,
                response_headers: None,
                instance: Some("test".into()),
                note: None,
            },
            outcome: AttemptOutcome::Delivered,
        })
        .0,
        pending(SyncFinished {
            new: sync("fast sync"),
            outcome: Ok(result("fast sync")),
            at: Utc::now(),
        })
        .0,
        pending(SyncFinished {
            new: keyed("slow sync"),
            outcome: Ok(result("slow sync")),
            at: Utc::now(),
        })
        .0,
    ];
    let (look, seen) = pending(LookForTemporaryFiles);
    let before = open_temporary_files();
    batch.push(look);
    writer.commit_batch(&mut batch);
    let opened = opened_since(&before, seen);
    assert!(opened.is_empty(), "statement journals: {opened:?}");
    assert_eq!(claimed_again.blocking_recv().unwrap().unwrap().len(), 2);
    let statuses: Vec<(String, String)> = writer
        .conn
        .prepare("SELECT id, status FROM requests WHERE mode = 'sync' ORDER BY id")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        statuses,
        [
            ("fast sync".to_string(), "completed".to_string()),
            ("slow sync".to_string(), "completed".to_string())
        ]
    );
}

/// Every mode and status has its row in the kept counts, which the triggers only add to.
#[test]
fn every_mode_and_status_has_its_count() {
    let (_dir, conn) = database();
    for mode in crate::model::Mode::ALL {
        for status in Status::ALL {
            let rows: i64 = conn
                .query_row(
                    "SELECT count(*) FROM request_counts WHERE mode = ?1 AND status = ?2",
                    [mode.as_str(), status.as_str()],
                    |row| row.get(0),
                )
                .unwrap();
            assert_eq!(rows, 1, "{} {}", mode.as_str(), status.as_str());
        }
    }
}

/// Leases taken while a database had two lease indexes (schema 16) are still found once
/// migration 0017 has made them one: the heartbeat renews them by owner and token, finds the
/// owner's expired ones, and the release at shutdown hands them back, each through the index.
#[test]
fn leases_taken_before_the_lease_index_merge_are_still_found() {
    use super::writes::{EXPIRED_LEASES_OF, RELEASE, RENEW_LEASE};

    let (_dir, mut conn) = database_at_schema(16);
    queue(&conn, FULL, 3, now() - 1_000);
    let lease = Duration::from_secs(30);
    let jobs = claim(
        &conn,
        "test",
        2,
        (lease, STEP),
        &rooms(&[], &[]),
        (now(), &mut String::new()),
    )
    .unwrap();
    assert_eq!(jobs.len(), 2);

    assert_eq!(migrate(&mut conn).unwrap(), 16);
    let plans = super::plans::explain_hot(&conn).unwrap();
    for statement in [
        "heartbeat",
        "heartbeat: expired leases",
        "release at shutdown",
    ] {
        let plan = plans
            .iter()
            .find(|plan| plan.statement == statement)
            .unwrap();
        assert!(
            plan.plan.contains("requests_leases"),
            "{statement}: {}",
            plan.plan
        );
    }

    let later = now() + millis_of(lease) * 2;
    let renewed = conn
        .prepare(RENEW_LEASE)
        .unwrap()
        .execute(params!["test", jobs[0].token, later])
        .unwrap();
    assert_eq!(renewed, 1);
    // Past the first lease, only the job whose lease was not renewed has run out.
    let expired: Vec<String> = conn
        .prepare(EXPIRED_LEASES_OF)
        .unwrap()
        .query_map(params!["test", later - 1], |row| row.get(1))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(expired, [jobs[1].token.clone()]);
    let released = conn
        .prepare(RELEASE)
        .unwrap()
        .execute(params!["test"])
        .unwrap();
    assert_eq!(released, 2);
    let leased: i64 = conn
        .query_row(
            "SELECT count(*) FROM requests WHERE lease_owner IS NOT NULL OR lease_token IS NOT NULL",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(leased, 0);
}

/// Requests stored before migration 0018 are listed by their status after it: the open ones
/// from the unfinished requests' indexes, reading those alone however many finished requests
/// a mode or a host has, and the finished ones from the status indexes.
#[test]
fn requests_stored_before_the_unfinished_split_are_listed_by_their_status() {
    let (_dir, mut conn) = database_at_schema(17);
    let mut insert = conn
        .prepare(
            "INSERT INTO requests (id, mode, status, payload_hash, iterations, created_at,
                                   callback_host, next_attempt_at)
             VALUES (?1, ?2, ?3, 'h', 1, ?4, ?5, ?6)",
        )
        .unwrap();
    conn.execute_batch("BEGIN").unwrap();
    // A history of one host's deliveries and of sync requests, older than the open ones.
    for i in 0..20_000_i64 {
        let (mode, status, host) = if i % 2 == 0 {
            ("sync", "completed", None)
        } else {
            ("async", "callback_success", Some("hooks.example"))
        };
        insert
            .execute(params![
                format!("old {i:05}"),
                mode,
                status,
                i,
                host,
                None::<i64>
            ])
            .unwrap();
    }
    let open = [
        ("open pending", "async", "pending"),
        ("open processing", "async", "processing"),
        ("open callback_pending", "async", "callback_pending"),
        ("open sync", "sync", "processing"),
    ];
    for (n, (id, mode, status)) in open.iter().enumerate() {
        let async_host = (*mode == "async").then_some("hooks.example");
        let due = (*mode == "async").then_some(now());
        insert
            .execute(params![
                id,
                mode,
                status,
                30_000 + n as i64,
                async_host,
                due
            ])
            .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    drop(insert);

    migrate(&mut conn).unwrap();
    let plans = super::plans::explain_hot(&conn).unwrap();
    let start_up = plans
        .iter()
        .find(|plan| plan.statement == "start-up: fail abandoned sync")
        .unwrap();
    assert!(
        start_up.plan.contains("requests_unfinished"),
        "{}",
        start_up.plan
    );
    let flagged: Vec<String> = conn
        .prepare("SELECT id FROM requests WHERE unfinished IS NOT NULL ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut open_ids: Vec<String> = open.iter().map(|(id, _, _)| id.to_string()).collect();
    open_ids.sort();
    assert_eq!(flagged, open_ids);

    let filter = |mode: Option<Mode>, status: Status, host: Option<&str>| {
        ListFilter {
            mode,
            status: Some(status),
            callback_host: host.map(str::to_string),
            ..ListFilter::default()
        }
        .without_implied_mode()
    };
    let cases = [
        (filter(None, Status::Pending, None), vec!["open pending"]),
        (
            filter(None, Status::Processing, None),
            vec!["open sync", "open processing"],
        ),
        (
            filter(Some(Mode::Sync), Status::Processing, None),
            vec!["open sync"],
        ),
        (
            filter(Some(Mode::Async), Status::Processing, None),
            vec!["open processing"],
        ),
        (
            filter(None, Status::CallbackPending, Some("hooks.example")),
            vec!["open callback_pending"],
        ),
    ];
    for (filter, want) in cases {
        let (ids, steps) = page_steps(&conn, &filter);
        assert_eq!(ids, want, "{filter:?}");
        // The four open requests, not the 10,000 finished ones of the mode or the host.
        assert!(steps < 500, "{filter:?}: {steps} steps");
    }
    let (finished, steps) = page_steps(
        &conn,
        &ListFilter {
            limit: 3,
            ..filter(None, Status::CallbackSuccess, Some("hooks.example"))
        },
    );
    assert_eq!(finished, ["old 19999", "old 19997", "old 19995"]);
    assert!(steps < 500, "{steps} steps");
}
