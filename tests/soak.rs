//! Soak (#12 checks, #23 item 4): the mix of a real service over time, not a crash point on a small state.
//!
//! Three producers append 200 B messages at a steady rate. Three groups consume: `fast` acks in batches; `flaky`
//! abandons 3% of its deliveries (a consumer that died: the lease times out) and nacks 2% with a delay; `slow` holds
//! its first delivery for the whole run (a long job, its lease extended every 200 ms) while another consumer of the
//! group does the rest. Segments roll, are swept and deleted as they are consumed.
//!
//! - `a_long_mix_keeps_disk_and_cost_flat`, on a small real file system (tmpfs; root, required under CI): the disk
//!   held stays within a bound of what the groups have not acked (not of how long the slow message is held), the
//!   bytes written per message stay flat, the other groups keep up while `slow` holds its message; then full-disk
//!   episodes (a filler file takes every free byte for a while); then every acknowledged append is delivered to
//!   every group. The figures per window are printed (README "Soak").
//! - `kill9_cycles_of_the_mix_lose_nothing`: the same mix in a child process, killed with SIGKILL again and again on
//!   the same queue; every acknowledged append is delivered to every group across the cycles, each content intact.
//!
//! `WALQ_SOAK=n` runs each n times longer.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::tmpfs::mount_or_skip;
use walq::{Consumer, Delivery, Error, Message, Queue, QueueBuilder};

const PRODUCERS: u64 = 3;
const APPENDS_PER_SECOND_PER_PRODUCER: u64 = 1000;
const VALUE_BYTES: usize = 200;
const GROUPS: [&str; 3] = ["fast", "flaky", "slow"];
const ACK_TIMEOUT: Duration = Duration::from_secs(1);
const NACK_DELAY: Duration = Duration::from_millis(200);
const WINDOW: Duration = Duration::from_secs(2);
const CHILD_DIR_ENV: &str = "WALQ_SOAK_CHILD_DIR";
const CHILD_CYCLE_ENV: &str = "WALQ_SOAK_CHILD_CYCLE";

/// The value of message `seq` of producer `producer`: both numbers, then bytes derived from them.
fn payload(producer: u64, seq: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(VALUE_BYTES);
    value.extend_from_slice(&producer.to_le_bytes());
    value.extend_from_slice(&seq.to_le_bytes());
    let mut x = producer.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq ^ 0xD1B5_4A32_D192_ED03;
    while value.len() < VALUE_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        value.push(x as u8);
    }
    value
}

/// The producer and sequence number of a value, if it is exactly what [`payload`] made for them.
fn parse(value: Option<&[u8]>) -> Option<(u64, u64)> {
    let value = value?;
    let producer = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(value.get(8..16)?.try_into().ok()?);
    (payload(producer, seq) == value).then_some((producer, seq))
}

/// What the mix reports as it goes: the in-process test collects it, the child prints it.
trait Events: Send + Sync + 'static {
    /// Producer `producer`'s append of `seq` was acknowledged.
    fn appended(&self, producer: u64, seq: u64);
    /// Group `group` is about to ack message (`producer`, `seq`): it was delivered to a consumer that handled it.
    fn handled(&self, group: usize, producer: u64, seq: u64);
    /// Group `group`'s ack of message (`producer`, `seq`) returned `Ok`.
    fn acked(&self, group: usize, producer: u64, seq: u64);
    /// Something the oracle must fail on.
    fn violation(&self, what: String);
}

/// Counters the mix keeps, whatever the events go to.
#[derive(Default)]
struct Counters {
    appended: AtomicU64,
    acked: [AtomicU64; 3],
    disk_full: AtomicU64,
    /// Latencies (µs) of this window: appends, and the fast group's `ack_all`.
    append_us: Mutex<Vec<u64>>,
    fast_ack_us: Mutex<Vec<u64>>,
}

/// The running mix.
struct Mix {
    producing: Arc<AtomicBool>,
    consuming: Arc<AtomicBool>,
    release_held: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
    /// Deliveries the flaky group abandoned (kept so that their leases time out rather than end on drop).
    abandoned: Arc<Mutex<Vec<Delivery>>>,
}

impl Mix {
    fn start(queue: &Queue, first_producer: u64, events: Arc<dyn Events>) -> Mix {
        let mut mix = Mix {
            producing: Arc::new(AtomicBool::new(true)),
            consuming: Arc::new(AtomicBool::new(true)),
            release_held: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            counters: Arc::default(),
            abandoned: Arc::default(),
        };
        for p in 0..PRODUCERS {
            mix.produce(queue.clone(), first_producer + p, events.clone());
        }
        let group = |name: &str| queue.group(name).unwrap();
        mix.consume(group("fast").consumer(), 0, events.clone(), Duration::ZERO);
        for _ in 0..2 {
            mix.consume_flaky(group("flaky").consumer(), events.clone());
        }
        mix.hold_first(group("slow").consumer(), events.clone());
        mix.consume(group("slow").consumer(), 2, events, Duration::from_millis(5));
        mix
    }

    fn spawn(&mut self, work: impl FnOnce() + Send + 'static) {
        self.threads.push(std::thread::spawn(work));
    }

    fn produce(&mut self, queue: Queue, producer: u64, events: Arc<dyn Events>) {
        let (producing, counters) = (self.producing.clone(), self.counters.clone());
        self.spawn(move || {
            let period = Duration::from_secs(1) / APPENDS_PER_SECOND_PER_PRODUCER as u32;
            let mut due = Instant::now();
            let mut seq = 0;
            while producing.load(Ordering::Relaxed) {
                let started = Instant::now();
                match queue.append(Message::new(payload(producer, seq))) {
                    Ok(_) => {
                        counters.append_us.lock().unwrap().push(started.elapsed().as_micros() as u64);
                        counters.appended.fetch_add(1, Ordering::Relaxed);
                        events.appended(producer, seq);
                        seq += 1;
                    }
                    Err(Error::DiskFull) => {
                        counters.disk_full.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(20)); // the same message is tried again
                    }
                    Err(error) => return events.violation(format!("append failed: {error}")),
                }
                due += period;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                } else if now - due > Duration::from_secs(1) {
                    due = now; // after a full disk: go on at the rate, do not burst to catch up
                }
            }
        });
    }

    /// Takes batches; `pause` after each (the slow group's worker); acks them all.
    fn consume(&mut self, consumer: Consumer, group: usize, events: Arc<dyn Events>, pause: Duration) {
        let (consuming, counters) = (self.consuming.clone(), self.counters.clone());
        self.spawn(move || {
            while consuming.load(Ordering::Relaxed) {
                let batch = match consumer.recv_batch_timeout(500, Duration::from_millis(50)) {
                    Ok(batch) => batch,
                    Err(Error::DiskFull) => {
                        std::thread::sleep(Duration::from_millis(20)); // a take journals its deliveries
                        continue;
                    }
                    Err(error) => return events.violation(format!("{}: take failed: {error}", GROUPS[group])),
                };
                if batch.is_empty() {
                    continue;
                }
                let ids: Vec<_> =
                    batch.iter().filter_map(|d| handle(&*events, group, d).map(|id| (d.offset(), id))).collect();
                std::thread::sleep(pause);
                let (count, started) = (batch.len() as u64, Instant::now());
                // Deliveries whose messages went out again after their leases ended are not acked: they come back.
                let stale = match consumer.ack_all(batch) {
                    Ok(()) => Vec::new(),
                    Err(Error::StaleLeases { offsets }) => offsets,
                    Err(Error::DiskFull) => continue, // the messages stay leased and come back
                    Err(error) => return events.violation(format!("{}: ack failed: {error}", GROUPS[group])),
                };
                for &(offset, (producer, seq)) in &ids {
                    if !stale.contains(&offset) {
                        events.acked(group, producer, seq);
                    }
                }
                if group == 0 {
                    counters.fast_ack_us.lock().unwrap().push(started.elapsed().as_micros() as u64);
                }
                counters.acked[group].fetch_add(count - stale.len() as u64, Ordering::Relaxed);
            }
        });
    }

    fn consume_flaky(&mut self, consumer: Consumer, events: Arc<dyn Events>) {
        let (consuming, counters, abandoned) = (self.consuming.clone(), self.counters.clone(), self.abandoned.clone());
        self.spawn(move || {
            let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ std::process::id() as u64;
            while consuming.load(Ordering::Relaxed) {
                let delivery = match consumer.recv_timeout(Duration::from_millis(50)) {
                    Ok(Some(delivery)) => delivery,
                    Ok(None) => continue,
                    Err(Error::DiskFull) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    Err(error) => return events.violation(format!("flaky: take failed: {error}")),
                };
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let result = match x % 100 {
                    0..=2 => {
                        abandoned.lock().unwrap().push(delivery);
                        continue;
                    }
                    3..=4 => delivery.nack(NACK_DELAY).map(drop),
                    _ => {
                        let id = handle(&*events, 1, &delivery);
                        delivery.ack().map(|()| {
                            counters.acked[1].fetch_add(1, Ordering::Relaxed);
                            if let Some((producer, seq)) = id {
                                events.acked(1, producer, seq);
                            }
                        })
                    }
                };
                match result {
                    Ok(()) | Err(Error::DiskFull) | Err(Error::StaleLease { .. }) => {}
                    Err(error) => return events.violation(format!("flaky: answer failed: {error}")),
                }
            }
        });
    }

    /// The slow group's long job: its first delivery, held (lease extended) until `release_held`.
    fn hold_first(&mut self, consumer: Consumer, events: Arc<dyn Events>) {
        let (consuming, release, counters) = (self.consuming.clone(), self.release_held.clone(), self.counters.clone());
        self.spawn(move || {
            let held = loop {
                match consumer.recv_timeout(Duration::from_millis(50)) {
                    Ok(Some(delivery)) => break delivery,
                    Ok(None) if consuming.load(Ordering::Relaxed) => continue,
                    Ok(None) => return,
                    Err(Error::DiskFull) => std::thread::sleep(Duration::from_millis(20)),
                    Err(error) => return events.violation(format!("slow: take failed: {error}")),
                }
            };
            while !release.load(Ordering::Relaxed) {
                std::thread::sleep(ACK_TIMEOUT / 5);
                match held.extend_lease() {
                    Ok(()) | Err(Error::DiskFull) => {}
                    // A stall longer than the lease (a loaded machine): the message went back to the group and
                    // the other consumer takes it; this job is over.
                    Err(Error::LeaseExpired { .. }) => return,
                    Err(error) => return events.violation(format!("slow: extend failed: {error}")),
                }
            }
            let id = handle(&*events, 2, &held);
            match held.ack() {
                Ok(()) => {
                    counters.acked[2].fetch_add(1, Ordering::Relaxed);
                    if let Some((producer, seq)) = id {
                        events.acked(2, producer, seq);
                    }
                }
                Err(Error::DiskFull) | Err(Error::StaleLease { .. }) => {}
                Err(error) => events.violation(format!("slow: ack failed: {error}")),
            }
        });
    }

    fn stop(mut self) {
        self.producing.store(false, Ordering::Relaxed);
        self.release_held.store(true, Ordering::Relaxed);
        self.consuming.store(false, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
    }
}

/// Checks a delivery's content and reports it handled; returns its producer and sequence number.
fn handle(events: &dyn Events, group: usize, delivery: &Delivery) -> Option<(u64, u64)> {
    let id = parse(delivery.message().value.as_deref());
    match id {
        Some((producer, seq)) => events.handled(group, producer, seq),
        None => {
            events.violation(format!("{}: offset {} holds a value no producer wrote", GROUPS[group], delivery.offset()))
        }
    }
    id
}

/// The in-process oracle: what was acknowledged, and what each group acked (a delivery counts only once its ack
/// returned: a message handed out and then lost before its ack would otherwise count as done).
#[derive(Default)]
struct Collected {
    appended: Mutex<BTreeMap<u64, u64>>,
    handled: [Mutex<HashSet<(u64, u64)>>; 3],
    violations: Mutex<Vec<String>>,
}

impl Events for Collected {
    fn appended(&self, producer: u64, seq: u64) {
        self.appended.lock().unwrap().insert(producer, seq + 1);
    }
    fn handled(&self, _group: usize, _producer: u64, _seq: u64) {}
    fn acked(&self, group: usize, producer: u64, seq: u64) {
        self.handled[group].lock().unwrap().insert((producer, seq));
    }
    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }
}

/// Asserts that every group handled every acknowledged append (`appended`: producer -> count), and nothing else.
fn assert_every_append_handled_by_every_group(appended: &BTreeMap<u64, u64>, handled: &[HashSet<(u64, u64)>]) {
    let total: u64 = appended.values().sum();
    assert!(total > 0, "nothing was appended");
    for (group, handled) in GROUPS.iter().zip(handled) {
        let missing: Vec<_> = appended
            .iter()
            .flat_map(|(&p, &n)| (0..n).map(move |s| (p, s)))
            .filter(|m| !handled.contains(m))
            .take(5)
            .collect();
        assert!(missing.is_empty(), "{group}: acknowledged appends never delivered, e.g. {missing:?} (of {total})");
    }
}

/// Dead-lettering is not part of the mix: the held message is delivered again after every kill, and must not
/// become a dead letter.
const MAX_DELIVERIES: u32 = 1000;

fn builder(dir: &Path, segment_bytes: u64) -> QueueBuilder {
    Queue::builder(dir)
        .segment_bytes_max(segment_bytes)
        .message_bytes_max(4096)
        .ack_timeout(ACK_TIMEOUT)
        .max_deliveries(MAX_DELIVERIES)
}

/// The two tests measure this process's writes and load: they do not run at once.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until every group has acked everything visible (nothing leased, delayed or waiting).
fn wait_drained(queue: &Queue, within: Duration, collected: &Collected) {
    let deadline = Instant::now() + within;
    loop {
        let stats = queue.stats();
        if stats.groups.iter().all(|g| g.lag == 0 && g.in_flight == 0) {
            return;
        }
        let lags: Vec<_> = stats.groups.iter().map(|g| (g.name.clone(), g.lag, g.in_flight)).collect();
        let violations = collected.violations.lock().unwrap().clone();
        assert!(Instant::now() < deadline, "groups not drained after {within:?}: {lags:?}; {violations:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bytes this process passed to write calls so far.
fn written_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).and_then(|v| v.trim().parse().ok()).expect("wchar")
}

/// Bytes of the files of `dir` whose names end with `suffix`, and of all its files (groups/ included).
fn disk_bytes(dir: &Path, suffix: &str) -> (u64, u64) {
    let (mut matching, mut all) = (0, 0);
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue }; // deleted meanwhile
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                all += meta.len();
                if entry.file_name().to_string_lossy().ends_with(suffix) {
                    matching += meta.len();
                }
            }
        }
    }
    (matching, all)
}

fn p99(samples: &Mutex<Vec<u64>>) -> u64 {
    let mut v = std::mem::take(&mut *samples.lock().unwrap());
    v.sort_unstable();
    v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1))).copied().unwrap_or(0)
}

/// One window of the in-process run.
#[derive(Debug)]
struct Window {
    end_s: f64,
    appended: u64,
    written_per_message: u64,
    segment_bytes: u64,
    all_bytes: u64,
    unacked: u64,
    /// Each group's lag at the end of the window.
    lags: [u64; 3],
    acked: [u64; 3],
    append_p99_us: u64,
    fast_ack_p99_us: u64,
    stats_p99_us: u64,
}

/// Takes every free byte of the file system `dir` is on, with a file at `path`.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 4096, 64] {
        let bytes = vec![0xA5u8; chunk];
        while file.write_all(&bytes).is_ok() {}
    }
    let _ = file.sync_all();
}

const SEGMENT_BYTES: u64 = 1024 * 1024;

#[test]
fn a_long_mix_keeps_disk_and_cost_flat() {
    let _serial = one_at_a_time();
    let Some(fs) = mount_or_skip("a_long_mix_keeps_disk_and_cost_flat", 128 * 1024 * 1024) else { return };
    let dir = fs.path().join("q");
    // A size limit, evaluated by every maintenance pass: with the sweep the log stays far below it, so it never
    // has to drop a message a group has not consumed (before the sweep, the held message made the log outgrow
    // any such limit).
    let limit_bytes = 64 * 1024 * 1024;
    let queue = builder(&dir, SEGMENT_BYTES).retention_max_bytes(limit_bytes).open().unwrap();
    for name in GROUPS {
        queue.group(name).unwrap();
    }
    let collected = Arc::new(Collected::default());
    let mix = Mix::start(&queue, 0, collected.clone());
    let counters = mix.counters.clone();

    // Measured phase: windows of steady load while `slow` holds its first message.
    let windows_wanted = 15 * common::soak() as usize;
    let started = Instant::now();
    let mut windows: Vec<Window> = Vec::new();
    let (mut last_appended, mut last_written, mut last_acked) = (0, written_bytes(), [0u64; 3]);
    while windows.len() < windows_wanted {
        let mut stats_us = Vec::new();
        let window_end = Instant::now() + WINDOW;
        let mut stats = queue.stats();
        while Instant::now() < window_end {
            std::thread::sleep(Duration::from_millis(100));
            let t = Instant::now();
            stats = queue.stats();
            stats_us.push(t.elapsed().as_micros() as u64);
        }
        let appended = counters.appended.load(Ordering::Relaxed);
        let written = written_bytes();
        let acked: [u64; 3] = std::array::from_fn(|g| counters.acked[g].load(Ordering::Relaxed));
        let (segment_bytes, all_bytes) = disk_bytes(&dir, ".seg");
        let new = appended - last_appended;
        windows.push(Window {
            end_s: started.elapsed().as_secs_f64(),
            appended: new,
            written_per_message: (written - last_written) / new.max(1),
            segment_bytes,
            all_bytes,
            unacked: stats.groups.iter().map(|g| g.lag).sum(),
            lags: std::array::from_fn(|g| stats.groups.iter().find(|s| s.name == GROUPS[g]).map_or(0, |s| s.lag)),
            acked: std::array::from_fn(|g| acked[g] - last_acked[g]),
            append_p99_us: p99(&counters.append_us),
            fast_ack_p99_us: p99(&counters.fast_ack_us),
            stats_p99_us: p99(&Mutex::new(stats_us)),
        });
        (last_appended, last_written, last_acked) = (appended, written, acked);
    }
    let stats = queue.stats();
    println!(
        "soak: {} appended, {} segments swept, {} deleted",
        stats.next_offset.0, stats.segments_swept, stats.segments_deleted
    );
    println!("soak windows (2 s): end_s appended B_written/msg seg_MiB all_MiB unacked acked[fast,flaky,slow] p99_us[append,fast_ack,stats]");
    for w in &windows {
        println!(
            "  {:6.1} {:6} {:6} {:6.2} {:6.2} {:6} {:?} [{}, {}, {}]",
            w.end_s,
            w.appended,
            w.written_per_message,
            w.segment_bytes as f64 / 1048576.0,
            w.all_bytes as f64 / 1048576.0,
            w.unacked,
            w.acked,
            w.append_p99_us,
            w.fast_ack_p99_us,
            w.stats_p99_us
        );
    }

    // Disk: within a bound of what is not acked, not of the distance to the held message.
    let total_appended_bytes = stats.next_offset.0 * (VALUE_BYTES as u64 + 44);
    for w in &windows {
        let bound = 6 * SEGMENT_BYTES + w.unacked * 512;
        assert!(
            w.segment_bytes <= bound,
            "segments hold {} B with {} unacked (bound {bound} B): {w:?}",
            w.segment_bytes,
            w.unacked
        );
    }
    assert!(
        total_appended_bytes > 6 * SEGMENT_BYTES * 2,
        "the run must append well past the bound ({total_appended_bytes} B)"
    );
    assert!(stats.segments_swept > 0, "{stats:?}");
    assert_eq!(stats.messages_dropped_by_limits, 0, "the size limit had to drop messages: {stats:?}");
    // Cost per message and keeping up, early against late (the first two windows warm up).
    let steady = &windows[2..];
    let (early, late) = steady.split_at(steady.len() / 2);
    let mean = |ws: &[Window], f: &dyn Fn(&Window) -> u64| ws.iter().map(f).sum::<u64>() / ws.len().max(1) as u64;
    let (early_w, late_w) = (mean(early, &|w| w.written_per_message), mean(late, &|w| w.written_per_message));
    assert!(late_w <= 2 * early_w + 256, "bytes written per message grew: {early_w} -> {late_w}");
    // Keeping up: the fast and flaky groups' lag stays within a few seconds of production (a stall of a second
    // on a loaded machine is caught up; a group that falls behind for good is not).
    let lag_bound = 4 * PRODUCERS * APPENDS_PER_SECOND_PER_PRODUCER;
    for w in steady {
        assert!(w.lags[0] <= lag_bound && w.lags[1] <= lag_bound, "fast or flaky fell behind: {w:?}");
    }
    // Latency cliffs only (timings are the benchmarks' business): the median window's p99, late against early (a
    // median, so that one stalled window on a loaded machine does not decide).
    let median = |ws: &[Window], f: &dyn Fn(&Window) -> u64| {
        let mut v: Vec<u64> = ws.iter().map(f).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    for (what, f) in [
        ("append", &(|w: &Window| w.append_p99_us) as &dyn Fn(&Window) -> u64),
        ("fast ack_all", &|w: &Window| w.fast_ack_p99_us),
        ("stats", &|w: &Window| w.stats_p99_us),
    ] {
        let (e, l) = (median(early, f), median(late, f));
        assert!(l <= 5 * e + 50_000, "{what} p99 grew from {e} µs to {l} µs");
    }

    // Full-disk episodes: a filler takes every free byte, then is removed. Producers get DiskFull and retry.
    let filler = fs.path().join("filler");
    for _ in 0..2 {
        fill(&filler);
        std::thread::sleep(Duration::from_secs(2));
        std::fs::remove_file(&filler).unwrap();
        std::thread::sleep(Duration::from_secs(2));
    }
    let disk_full = counters.disk_full.load(Ordering::Relaxed);

    // Drain: producers stop, `slow` lets go of its message, every group finishes.
    mix.producing.store(false, Ordering::Relaxed);
    mix.release_held.store(true, Ordering::Relaxed);
    wait_drained(&queue, Duration::from_secs(60), &collected);
    let abandoned = mix.abandoned.clone();
    mix.stop();
    drop(std::mem::take(&mut *abandoned.lock().unwrap()));
    let violations = collected.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:?}");
    let handled: Vec<_> = collected.handled.iter().map(|h| h.lock().unwrap().clone()).collect();
    let appended = collected.appended.lock().unwrap().clone();
    assert_every_append_handled_by_every_group(&appended, &handled);
    assert!(!queue.stats().poisoned);
    let messages: u64 = appended.values().sum();
    println!("soak: {messages} messages, {disk_full} appends refused by a full disk and retried, every one delivered to every group");
    common::report(
        "S1",
        "soak: steady mix with a held message, full-disk episodes; acknowledged appends delivered to every group",
        messages * 3,
        "deliveries checked",
        0,
    );
}

/// Prints the events of the child process, one line each, before the action they announce.
struct Printed;

impl Events for Printed {
    fn appended(&self, producer: u64, seq: u64) {
        let _ = writeln!(std::io::stdout().lock(), "APPENDED {producer} {seq}");
    }
    /// Printed before the ack: a kill between a durable ack and a line printed after it would lose the line, and
    /// the message is never delivered again.
    fn handled(&self, group: usize, producer: u64, seq: u64) {
        let _ = writeln!(std::io::stdout().lock(), "HANDLED {group} {producer} {seq}");
    }
    fn acked(&self, _group: usize, _producer: u64, _seq: u64) {}
    fn violation(&self, what: String) {
        let _ = writeln!(std::io::stdout().lock(), "VIOLATION {what}");
    }
}

#[test]
fn kill9_cycles_of_the_mix_lose_nothing() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        // The child: run the mix until killed.
        let cycle = common::env_u64(CHILD_CYCLE_ENV).unwrap();
        let queue = builder(Path::new(&dir), 256 * 1024).open().unwrap();
        // The harness printed "test ... " without a newline: end that line, or the first event would join it.
        println!("\nSTARTED");
        let _mix = Mix::start(&queue, cycle * PRODUCERS, Arc::new(Printed));
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let _serial = one_at_a_time();
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    let queue = builder(&dir, 256 * 1024).open().unwrap();
    for name in GROUPS {
        queue.group(name).unwrap();
    }
    drop(queue);
    let mut appended = BTreeMap::new();
    let mut handled: Vec<HashSet<(u64, u64)>> = vec![HashSet::new(); 3];
    let cycles = 6 * common::soak();
    for cycle in 0..cycles {
        let env = [(CHILD_DIR_ENV, dir.display().to_string()), (CHILD_CYCLE_ENV, cycle.to_string())];
        let run_ms = 1000 + (cycle * 379) % 1500;
        let lines = common::run_and_kill9(
            "kill9_cycles_of_the_mix_lose_nothing",
            &env,
            "",
            true,
            Duration::from_millis(run_ms),
        );
        let (mut appends, mut handles) = (0, 0);
        for line in &lines {
            let fields = common::report_numbers(line);
            match line.split(' ').next() {
                Some("APPENDED") => {
                    appended.insert(fields[0], fields[1] + 1);
                    appends += 1;
                }
                Some("HANDLED") => {
                    handled[fields[0] as usize].insert((fields[1], fields[2]));
                    handles += 1;
                }
                Some("VIOLATION") => panic!("cycle {cycle}: {line}"),
                _ => {}
            }
        }
        assert!(lines.iter().any(|l| l == "STARTED"), "cycle {cycle}: the child never started");
        assert!(
            appends > 0 && handles > 0,
            "cycle {cycle}: no work acknowledged ({appends} appends, {handles} handled)"
        );
    }
    // The last owner: everything still needed is delivered to each group.
    let queue = builder(&dir, 256 * 1024).open().unwrap();
    let collected = Arc::new(Collected::default());
    for (group, name) in GROUPS.iter().enumerate() {
        let consumer = queue.group(name).unwrap().consumer();
        let deadline = Instant::now() + Duration::from_secs(60);
        while queue.stats().groups.iter().find(|g| g.name == *name).unwrap().lag > 0 {
            assert!(Instant::now() < deadline, "{name}: not drained");
            let batch = consumer.recv_batch_timeout(1000, Duration::from_millis(100)).unwrap();
            let ids: Vec<_> = batch.iter().filter_map(|delivery| handle(&*collected, group, delivery)).collect();
            consumer.ack_all(batch).unwrap();
            for (producer, seq) in ids {
                collected.acked(group, producer, seq);
            }
        }
    }
    let violations = collected.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:?}");
    for (group, set) in handled.iter_mut().enumerate() {
        set.extend(collected.handled[group].lock().unwrap().iter().copied());
    }
    assert_every_append_handled_by_every_group(&appended, &handled);
    let messages: u64 = appended.values().sum();
    println!("soak kill -9: {cycles} kills, {messages} acknowledged appends, every one delivered to every group");
    common::report(
        "S1 kill -9",
        "soak mix killed with SIGKILL again and again; acknowledged appends delivered to every group",
        messages * 3,
        "deliveries checked",
        0,
    );
}
