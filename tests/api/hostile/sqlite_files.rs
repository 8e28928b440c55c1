//! The SQLite database's files: one process per database whatever path names it, and a
//! write-ahead log that stays bounded while the service runs under continuous reads.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::{Behaviour, Receiver, TestServer, postgres_admin_url, read};

/// Writes, twelve readers that never pause, and two more connections that always keep a read
/// transaction open between them (each for 20 ms, overlapping), for twelve seconds: the WAL
/// is checkpointed, started again and cut back while the service runs, once past 8 MiB (it
/// grew to 45 MB in 40 s when SQLite's own checkpoints found it always in use).
#[tokio::test]
async fn the_wal_stays_bounded_under_continuous_reads() {
    if postgres_admin_url().is_some() {
        eprintln!("skipped: a SQLite test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.db");
    let app = TestServer::builder()
        .database_url(&format!("sqlite://{}", path.display()))
        .setting("async-queue-max-size", "1000000")
        .start()
        .await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let wal = dir.path().join("wal.db-wal");
    let until = Instant::now() + Duration::from_secs(12);
    let overlapping: Vec<_> = (0..2)
        .map(|n| {
            let path = path.clone();
            std::thread::spawn(move || {
                let conn = rusqlite::Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .unwrap();
                std::thread::sleep(Duration::from_millis(10 * n));
                while Instant::now() < until {
                    conn.execute_batch("BEGIN").unwrap();
                    let _: i64 = conn
                        .query_row("SELECT count(*) FROM request_counts", [], |row| row.get(0))
                        .unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                    conn.execute_batch("COMMIT").unwrap();
                }
            })
        })
        .collect();
    let writers = (0..8).map(|w| {
        let app = &app;
        let url = receiver.url();
        async move {
            let mut n = 0;
            while Instant::now() < until {
                let body = json!({"data": format!("w{w} {n} {}", "x".repeat(500)), "iterations": 1, "callback_url": url});
                let (status, _) = read(app.post_async(&body).await).await;
                assert_eq!(status, 200);
                n += 1;
            }
        }
    });
    let readers = (0..12).map(|_| {
        let app = &app;
        async move {
            while Instant::now() < until {
                let (status, _) = read(app.get("/requests?limit=1000").await).await;
                assert_eq!(status, 200);
            }
        }
    });
    let largest = async {
        let mut largest = 0;
        while Instant::now() < until {
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        largest
    };
    let ((), (), largest) = tokio::join!(
        async {
            join_all(writers).await;
        },
        async {
            join_all(readers).await;
        },
        largest
    );
    for reader in overlapping {
        reader.join().unwrap();
    }
    eprintln!("largest WAL: {} KiB", largest / 1024);
    assert!(
        largest < 14 * 1024 * 1024,
        "the WAL reached {} KiB",
        largest / 1024
    );
}

/// A second process on the same database is refused however the path is spelt: the same
/// path, a symlink to it, a hard link to it. (The lock was a file named after the path: through
/// another name, a second instance released the first's live leases and both delivered.)
#[tokio::test]
async fn one_process_per_database_whatever_path_names_it() {
    if postgres_admin_url().is_some() {
        eprintln!("skipped: a SQLite test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.db");
    let first = TestServer::builder()
        .database_url(&format!("sqlite://{}", path.display()))
        .child()
        .start()
        .await;
    let symlink = dir.path().join("symlink.db");
    std::os::unix::fs::symlink(&path, &symlink).unwrap();
    let hard_link = dir.path().join("hard-link.db");
    std::fs::hard_link(&path, &hard_link).unwrap();
    let relative = format!(
        "{}/../{}/one.db",
        dir.path().display(),
        dir.path().file_name().unwrap().to_string_lossy()
    );
    for other in [
        path.display().to_string(),
        symlink.display().to_string(),
        hard_link.display().to_string(),
        relative,
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_syncasync"))
            .arg("serve")
            .env("APP_HOST", "127.0.0.1")
            .env("APP_PORT", "0")
            .env("APP_DATABASE_URL", format!("sqlite://{other}"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{other}: started beside the first"
        );
        assert!(
            stderr.contains("in use by another syncasync process"),
            "{other}: {stderr}"
        );
    }
    // The first is unharmed.
    let (status, _) = read(first.get("/healthz").await).await;
    assert_eq!(status, 200);
}
