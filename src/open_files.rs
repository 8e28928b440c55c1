//! The process's open-file limit, and what fits in it.
//!
//! Every client connection, callback connection, database connection and file is a file
//! descriptor. If they run out, the next `accept` or `connect` fails with "Too many open
//! files": a callback fails, a client is refused. So at start-up the soft limit is raised to
//! the hard one (the usual soft default, 1024, is a relic), and the connection cap must fit in
//! what is left after the descriptors the service needs for its own work: each delivery in
//! flight (its socket, and room for as many idle keep-alive sockets), the database, and a
//! reserve for files, logs and the runtime.

/// Descriptors kept for the database files and pool, logs, the runtime and the listener.
const RESERVE: u64 = 64;

/// Connections served when the cap is left to fit (`APP_HTTP_MAX_CONNECTIONS=0`) and the
/// limit allows more.
const AUTO_MAX_CONNECTIONS: u64 = 10_000;

/// Fewest client connections worth running with.
const MIN_CONNECTIONS: u64 = 16;

/// Raises the soft limit on open files to the hard limit; returns the limit now in force.
#[cfg(unix)]
pub fn raise_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(not(unix))]
pub fn raise_limit() -> std::io::Result<u64> {
    Ok(u64::MAX)
}

/// Why the settings do not fit in the open-file limit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "APP_HTTP_MAX_CONNECTIONS ({connections}) does not fit in the open-file limit ({limit}, \
     ulimit -n): {needed} descriptors are kept for APP_ASYNC_WORKER_COUNT deliveries (four \
     each), the database pool and files, which leaves {left}; lower it (or 0 to fit), lower \
     APP_ASYNC_WORKER_COUNT, or raise the limit"
)]
pub struct DoesNotFit {
    connections: u64,
    limit: u64,
    needed: u64,
    left: u64,
}

/// The connection cap to use: `requested`, or with 0 as many as fit (at most
/// [`AUTO_MAX_CONNECTIONS`]); an error if that leaves fewer than [`MIN_CONNECTIONS`] or the
/// requested cap does not fit.
pub fn connection_cap(
    requested: u64,
    limit: u64,
    workers: u64,
    database_connections: u64,
) -> Result<u64, DoesNotFit> {
    // Per worker: its delivery's socket, the socket of a slow delivery that left it (the
    // slow pool is as large as the workers), and room for two idle kept-alive ones (at most
    // four destinations keep as many as their cap, at most half the workers each).
    let needed = RESERVE + 4 * workers + database_connections;
    let left = limit.saturating_sub(needed);
    let wanted = if requested == 0 {
        left.min(AUTO_MAX_CONNECTIONS)
    } else {
        requested
    };
    if wanted > left || (requested == 0 && wanted < MIN_CONNECTIONS) {
        return Err(DoesNotFit {
            connections: if requested == 0 {
                MIN_CONNECTIONS
            } else {
                requested
            },
            limit,
            needed,
            left,
        });
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_what_is_left() {
        assert_eq!(connection_cap(0, 20_000, 256, 21), Ok(10_000));
        assert_eq!(
            connection_cap(0, 2048, 256, 21),
            Ok(2048 - RESERVE - 1024 - 21)
        );
        assert_eq!(connection_cap(200, 2048, 256, 21), Ok(200));
        assert!(connection_cap(1500, 2048, 256, 21).is_err());
        assert_eq!(
            connection_cap(0, 1200, 256, 21),
            Ok(1200 - RESERVE - 1024 - 21)
        );
        assert!(
            connection_cap(0, 1100, 256, 21).is_err(),
            "fewer than 16 left: nothing useful"
        );
        assert_eq!(
            connection_cap(2, 512, 32, 5),
            Ok(2),
            "a small explicit cap is fine"
        );
        assert_eq!(connection_cap(0, 512, 32, 5), Ok(512 - RESERVE - 128 - 5));
    }

    #[test]
    fn the_limit_is_raised_to_the_hard_limit() {
        let limit = raise_limit().unwrap();
        assert!(limit >= 64, "{limit}");
    }
}
