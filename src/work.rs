//! The unit of work (SPEC §1) and the bounded pool of threads that runs it.
//!
//! The work is pure CPU: thousands of SHA-256 rounds. Running it on the async runtime's
//! threads would stall every connection they serve (including `GET /healthz`), so it runs on
//! a fixed set of OS threads fed by a bounded queue. When the queue is full the caller is told
//! at once ([`PoolError::Busy`]) instead of piling up unbounded memory and latency. Work of a
//! few microseconds is the exception: it is done where it is asked for, as handing it over
//! would cost more than doing it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use sha2::digest::generic_array::GenericArray;
use sha2::digest::typenum::U64;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

/// The two hashes the work produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashes {
    pub input_hash: String,
    pub output_hash: String,
}

/// Runs the work function: `iterations` chained SHA-256 rounds over the hex digest of `data`.
///
/// Each round hashes `"{previous hex}:{i}"` (see [`Rounds`]): one call of the compression
/// function over two blocks laid out in place, and no allocation.
pub fn compute(data: &str, iterations: u32) -> Hashes {
    match compute_unless(data, iterations, &Cancel::never()) {
        Some(hashes) => hashes,
        None => unreachable!("a work that cannot be cancelled always finishes"),
    }
}

/// Rounds between two looks at the cancel flag: about a tenth of a millisecond of hashing,
/// so a cancelled million-iteration run stops within that, at no measurable cost.
const CANCEL_CHECK_EVERY: u32 = 256;

/// As [`compute`], but gives up (`None`) once `cancel` is set: checked before the first
/// round and every [`CANCEL_CHECK_EVERY`] rounds.
pub fn compute_unless(data: &str, iterations: u32, cancel: &Cancel) -> Option<Hashes> {
    if cancel.is_set() {
        return None;
    }
    let mut rounds = Rounds::new(&Sha256::digest(data.as_bytes()).into());
    let input_hash = hex_to_string(rounds.hex());
    for i in 0..iterations {
        if i % CANCEL_CHECK_EVERY == 0 && i > 0 && cancel.is_set() {
            return None;
        }
        rounds.next();
    }
    Some(Hashes {
        input_hash,
        output_hash: hex_to_string(rounds.hex()),
    })
}

/// The chain of rounds, as SHA-256 sees its messages. A round's message, `"{hex}:{i}"`, is 66
/// to 75 bytes, so padded it is exactly two blocks: the first is the previous digest's 64 hex
/// digits, the second the colon, the counter's digits, the padding and the length. Both are
/// kept laid out: a round writes the new digest's hex over the first, and steps the counter's
/// decimal digits in the second (re-laying the padding only when the counter gains a digit),
/// where `Sha256::digest` would buffer, pad and compress each message anew.
struct Rounds {
    /// The message of the next round.
    blocks: [GenericArray<u8, U64>; 2],
    /// How many decimal digits the counter has now (1 to 10).
    digits: usize,
}

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const SHA256_INIT: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

impl Rounds {
    /// The chain starting from `digest`, the next round's counter 0.
    fn new(digest: &[u8; 32]) -> Self {
        let mut rounds = Rounds {
            blocks: [GenericArray::default(); 2],
            digits: 1,
        };
        encode_hex(digest, rounds.first_block());
        rounds.lay_out_second_block(1);
        rounds.blocks[1][1] = b'0';
        rounds
    }

    /// The hex digits of the last digest.
    fn hex(&self) -> &[u8; 64] {
        self.blocks[0].as_ref()
    }

    fn first_block(&mut self) -> &mut [u8; 64] {
        self.blocks[0].as_mut()
    }

    /// Zeroes the second block but for the colon, then pads after `digits` digits and writes
    /// the message's length in bits (64 + 1 + digits bytes), big-endian, at its end.
    fn lay_out_second_block(&mut self, digits: usize) {
        let block = &mut self.blocks[1];
        block.fill(0);
        block[0] = b':';
        block[1 + digits] = 0x80;
        let bits = ((64 + 1 + digits) * 8) as u64;
        block[56..].copy_from_slice(&bits.to_be_bytes());
        self.digits = digits;
    }

    /// Hashes the message laid out, writes the digest's hex as the next message's first block
    /// and counts the second block's counter one up.
    fn next(&mut self) {
        let mut state = SHA256_INIT;
        sha2::compress256(&mut state, &self.blocks);
        // The digest is the state's words, big-endian.
        let mut digest = [0u8; 32];
        for (bytes, word) in digest.chunks_exact_mut(4).zip(state) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        encode_hex(&digest, self.first_block());
        self.count_up();
    }

    /// Adds one to the decimal counter at `blocks[1][1..1 + digits]`. Past `u32::MAX` it
    /// would gain an 11th digit, which no round reaches: `iterations` is a `u32` and the
    /// counter after the last round is never hashed.
    fn count_up(&mut self) {
        let digits = self.digits;
        let counter = &mut self.blocks[1][1..1 + digits];
        for digit in counter.iter_mut().rev() {
            if *digit == b'9' {
                *digit = b'0';
            } else {
                *digit += 1;
                return;
            }
        }
        // Every digit was a 9: the counter is now 10^digits, a 1 followed by zeros.
        if digits < 10 {
            self.lay_out_second_block(digits + 1);
            let counter = &mut self.blocks[1][1..2 + digits];
            counter.fill(b'0');
            counter[0] = b'1';
        }
    }
}

/// SHA-256 blocks of work done where it is asked for rather than on a pool thread: about
/// 6 µs of hashing (64 rounds of two blocks, ~90 ns a round with the CPU's SHA extensions),
/// less than handing it to a pool thread and its answer back costs (two thread wake-ups,
/// measured as the runtime's largest cost at iterations=1). Far below the ~100 µs a task may
/// run between two awaits without holding up the other connections of its runtime thread.
const INLINE_BLOCKS: usize = 128;

/// Whether the work of `data` over `iterations` rounds is within [`INLINE_BLOCKS`]: the input
/// is hashed once (with SHA-256's 9 bytes of padding), and each round hashes 64 hex digits,
/// a colon and a counter (two blocks).
fn is_small(data: &str, iterations: u32) -> bool {
    let rounds = usize::try_from(iterations).unwrap_or(usize::MAX);
    let input_blocks = data.len().saturating_add(9).div_ceil(64);
    input_blocks.saturating_add(rounds.saturating_mul(2)) <= INLINE_BLOCKS
}

/// Tells queued or running work that nobody wants its result any more (a sync client hung
/// up). Cheap to clone and to check: one shared atomic flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    fn never() -> Self {
        Self::default()
    }

    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Each byte's two lower-case hex digits: one lookup a byte.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 15]];
        byte += 1;
    }
    pairs
};

fn encode_hex(bytes: &[u8; 32], out: &mut [u8; 64]) {
    for (pair, &byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
}

fn hex_to_string(hex: &[u8; 64]) -> String {
    hex.iter().map(|&b| char::from(b)).collect()
}

/// What a finished unit of work reports.
#[derive(Debug, Clone)]
pub struct WorkOutput {
    pub hashes: Hashes,
    /// Wall time from the moment the hashing started (on a pool thread, or in place for
    /// small work), plus the simulated I/O.
    pub processing_time: Duration,
}

impl WorkOutput {
    /// The processing time in milliseconds, rounded to three decimals as the original
    /// reported it (`round(ms, 3)`).
    pub fn processing_time_ms(&self) -> f64 {
        (self.processing_time.as_secs_f64() * 1_000_000.0).round() / 1000.0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("the compute queue is full")]
    Busy,
    #[error("the compute pool has shut down")]
    Closed,
    #[error("the work was cancelled: nobody was waiting for its result")]
    Cancelled,
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of threads that run the work function, fed by a bounded queue.
#[derive(Clone)]
pub struct ComputePool {
    sender: crossbeam_channel::Sender<Job>,
    stats: Arc<PoolStats>,
    threads: usize,
    queue_capacity: usize,
    simulated_io: Duration,
}

#[derive(Default)]
struct PoolStats {
    queued: AtomicUsize,
    busy: AtomicUsize,
}

impl ComputePool {
    /// Starts `threads` worker threads sharing a queue of `queue_capacity` jobs.
    ///
    /// `simulated_io` is `APP_WORK_DURATION_SECONDS`: slept on the async runtime after the
    /// hashing, so it holds no pool thread.
    pub fn new(
        threads: usize,
        queue_capacity: usize,
        simulated_io: Duration,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(queue_capacity);
        let stats = Arc::new(PoolStats::default());
        for n in 0..threads {
            let receiver = receiver.clone();
            let stats = Arc::clone(&stats);
            thread::Builder::new()
                .name(format!("compute-{n}"))
                .spawn(move || {
                    // The loop ends when every sender (every pool handle) is dropped.
                    for job in receiver.iter() {
                        stats.queued.fetch_sub(1, Ordering::Relaxed);
                        stats.busy.fetch_add(1, Ordering::Relaxed);
                        job();
                        stats.busy.fetch_sub(1, Ordering::Relaxed);
                    }
                })?;
        }
        Ok(Self {
            sender,
            stats,
            threads,
            queue_capacity,
            simulated_io,
        })
    }

    /// Queues the work on the pool, or refuses at once if the queue is full. The returned
    /// [`PendingWork`] resolves when a pool thread has done it.
    pub fn submit(&self, data: String, iterations: u32) -> Result<PendingWork, PoolError> {
        self.submit_cancellable(data, iterations, Cancel::never())
    }

    /// As [`submit`](Self::submit); the work is skipped, or stopped between rounds, once
    /// `cancel` is set, and then resolves to [`PoolError::Cancelled`].
    pub fn submit_cancellable(
        &self,
        data: String,
        iterations: u32,
        cancel: Cancel,
    ) -> Result<PendingWork, PoolError> {
        let (reply, result) = oneshot::channel();
        let pending = PendingWork {
            result,
            simulated_io: self.simulated_io,
        };
        if is_small(&data, iterations) {
            let started = Instant::now();
            let hashes = compute_unless(&data, iterations, &cancel);
            // Nobody waits on `result` yet: the answer is ready when it first looks.
            let _ = reply.send(hashes.map(|h| (h, started.elapsed())));
            return Ok(pending);
        }
        let job: Job = Box::new(move || {
            let started = Instant::now();
            let hashes = compute_unless(&data, iterations, &cancel);
            // The receiver is gone only if the caller gave up: nothing to do.
            let _ = reply.send(hashes.map(|h| (h, started.elapsed())));
        });
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = self.sender.try_send(job) {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(match err {
                crossbeam_channel::TrySendError::Full(_) => PoolError::Busy,
                crossbeam_channel::TrySendError::Disconnected(_) => PoolError::Closed,
            });
        }
        Ok(pending)
    }

    /// Runs the work on the pool and waits for it without blocking the runtime.
    pub async fn run(&self, data: String, iterations: u32) -> Result<WorkOutput, PoolError> {
        self.submit(data, iterations)?.wait().await
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    /// What each unit of work waits beside its hashing (`APP_WORK_DURATION_SECONDS`).
    pub fn simulated_io(&self) -> Duration {
        self.simulated_io
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        self.stats.queued.load(Ordering::Relaxed)
    }

    /// Threads currently hashing.
    pub fn busy(&self) -> usize {
        self.stats.busy.load(Ordering::Relaxed)
    }
}

/// Work accepted by the pool.
pub struct PendingWork {
    result: oneshot::Receiver<Option<(Hashes, Duration)>>,
    simulated_io: Duration,
}

impl PendingWork {
    pub async fn wait(self) -> Result<WorkOutput, PoolError> {
        let (hashes, mut processing_time) = self
            .result
            .await
            .map_err(|_| PoolError::Closed)?
            .ok_or(PoolError::Cancelled)?;
        if !self.simulated_io.is_zero() {
            tokio::time::sleep(self.simulated_io).await;
            processing_time += self.simulated_io;
        }
        Ok(WorkOutput {
            hashes,
            processing_time,
        })
    }
}

/// Single-thread throughput of [`compute`] in units per second, for the benchmark's
/// compute bound.
pub fn measure_throughput(iterations: u32, duration: Duration) -> f64 {
    let started = Instant::now();
    let mut units: u64 = 0;
    while started.elapsed() < duration {
        let hashes = compute("benchmark payload", iterations);
        std::hint::black_box(hashes);
        units += 1;
    }
    units as f64 / started.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(data: &str, iterations: u32, input: &str, output: &str) {
        let hashes = compute(data, iterations);
        assert_eq!(hashes.input_hash, input, "input_hash of {data:?}");
        assert_eq!(
            hashes.output_hash, output,
            "output_hash of {data:?} x{iterations}"
        );
    }

    #[test]
    fn spec_test_vectors() {
        check(
            "hello world",
            1000,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9",
            "fe95811b8cb653eff38837427b8bb5d243daae5920c86cf8f494c8edc7e0b744",
        );
        check(
            "test data",
            100,
            "916f0027a575074ce72a331777c3478d6513f786a591bd892da1a577bf2335f9",
            "c05ae8cf2d0157a8276c179394cd8bd61b399cf63b0e0048c869853fa5b865f7",
        );
        check(
            "héllo wörld ✓",
            1,
            "c2a59c71097b678dc5af2eb1f98ddc575b63948b0fa6740071a945673aaada4d",
            "22774497307711da8fea7c242d32b227b6587ba8ffa1e0f41b5166bc7399577e",
        );
        check(
            "x",
            1_000_000,
            "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
            "f5d9c5410aeca2d468591ebd93b006c8878f851bd6a6655dba15d3ca11218b5e",
        );
    }

    /// The work function as SPEC §1 states it, one formatted message a round.
    fn reference(data: &str, iterations: u32) -> Hashes {
        let input_hash = hex::encode(Sha256::digest(data.as_bytes()));
        let mut hash = input_hash.clone();
        for i in 0..iterations {
            hash = hex::encode(Sha256::digest(format!("{hash}:{i}").as_bytes()));
        }
        Hashes {
            input_hash,
            output_hash: hash,
        }
    }

    #[test]
    fn the_chain_matches_the_formatted_rounds_across_every_change_of_digit_count() {
        for iterations in [
            0, 1, 2, 9, 10, 11, 99, 100, 101, 1000, 1001, 10_001, 100_001,
        ] {
            assert_eq!(compute("hello", iterations), reference("hello", iterations));
        }
    }

    #[test]
    fn the_counter_counts_in_decimal_up_to_the_largest_iteration() {
        let digest = Sha256::digest(b"x").into();
        for start in [0u32, 8, 98, 999_999_998, 4_294_967_290] {
            let mut rounds = Rounds::new(&digest);
            let digits = start.to_string();
            rounds.lay_out_second_block(digits.len());
            rounds.blocks[1][1..1 + digits.len()].copy_from_slice(digits.as_bytes());
            for n in start..start.saturating_add(5) {
                let text = n.to_string();
                assert_eq!(&rounds.blocks[1][1..1 + rounds.digits], text.as_bytes());
                let message = [&rounds.hex()[..], b":", text.as_bytes()].concat();
                let expected = hex::encode(Sha256::digest(&message));
                rounds.next();
                assert_eq!(rounds.hex(), expected.as_bytes(), "round {n}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_input_hashes_as_the_formatted_rounds(data in ".{0,200}", iterations in 0u32..1200) {
            proptest::prop_assert_eq!(compute(&data, iterations), reference(&data, iterations));
        }
    }

    #[test]
    fn cancelled_work_stops() {
        let cancel = Cancel::default();
        assert!(compute_unless("x", 10, &cancel).is_some());
        cancel.set();
        assert!(compute_unless("x", 1_000_000, &cancel).is_none());
    }

    #[tokio::test]
    async fn cancelled_work_stops_mid_run_on_the_pool() {
        let pool = ComputePool::new(1, 4, Duration::ZERO).unwrap();
        let cancel = Cancel::default();
        // About half a second of hashing in an optimised build; cancelled as soon as it runs.
        let work = pool
            .submit_cancellable("x".into(), 1_000_000, cancel.clone())
            .unwrap();
        while pool.busy() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = Instant::now();
        cancel.set();
        assert_eq!(work.wait().await.unwrap_err(), PoolError::Cancelled);
        assert!(started.elapsed() < Duration::from_millis(200));
    }

    #[tokio::test]
    async fn pool_refuses_work_past_its_queue() {
        // One thread and a queue of one: with the thread busy and one job queued, a third waits
        // for nothing and is refused.
        let pool = ComputePool::new(1, 1, Duration::ZERO).unwrap();
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run("a".into(), 1_000_000).await }
        });
        // Let the first job reach the thread before queueing the second.
        while pool.busy() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let second = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run("b".into(), 1000).await }
        });
        while pool.queued() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            pool.run("c".into(), 1000).await.unwrap_err(),
            PoolError::Busy
        );
        // Work of a few microseconds is done in place, full queue or not.
        let small = pool.run("d".into(), 1).await.unwrap();
        assert_eq!(small.hashes, compute("d", 1));
        assert!(first.await.unwrap().is_ok());
        assert!(second.await.unwrap().is_ok());
    }

    #[test]
    fn only_work_of_a_few_microseconds_is_small() {
        assert!(is_small("hello", 1));
        assert!(is_small("hello", 63));
        assert!(!is_small("hello", 64));
        assert!(!is_small("hello", u32::MAX));
        // The input counts: hashing a large payload once is not small.
        assert!(!is_small(&"x".repeat(64 * 128), 0));
        assert!(is_small(&"x".repeat(64 * 100), 1));
        // Padding: 119 bytes fit two blocks with it, 120 need three.
        assert!(is_small(&"x".repeat(119), 63));
        assert!(!is_small(&"x".repeat(120), 63));
    }

    #[tokio::test]
    async fn small_work_is_done_in_place_and_can_be_cancelled() {
        // No thread at all: only work done in place can be answered.
        let pool = ComputePool::new(0, 1, Duration::ZERO).unwrap();
        let done = pool.run("hello".into(), 1).await.unwrap();
        assert_eq!(done.hashes, compute("hello", 1));
        let cancel = Cancel::default();
        cancel.set();
        let skipped = pool.submit_cancellable("hello".into(), 1, cancel).unwrap();
        assert_eq!(skipped.wait().await.unwrap_err(), PoolError::Cancelled);
    }
}
