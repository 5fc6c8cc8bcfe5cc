//! walq against peer crates and raw baselines, on the same workloads, in one run on one disk:
//!
//! ```sh
//! cargo run --release --manifest-path benches/peers/Cargo.toml -- [--quick] [--out DIR] [--only NAME,...]
//! ```
//!
//! Every workload runs 3 times per engine (in rounds over the engines); the table shows the median run of each
//! column with the range of the runs.
//!
//! Writes `DIR/peers.md` (the table, with the machine and date) and `DIR/peers.svg` (the chart); `DIR` is
//! `docs/peers` at the root of the project by default (the README shows its chart, so it ships in the package). Needs root for the cold-cache reopen (`/proc/sys/vm/drop_caches`; without
//! it the reopen is warm and the table says so) and `strace` for the check of each engine's "sync".
//!
//! Workloads (counts divided by 10 with `--quick`, and the reopen queue is 64 MiB instead of 1 GiB):
//! 1. 1,000,000 appends of 100 B without fsync;
//! 2. 200,000 appends of 1 KiB without fsync;
//! 3. 2,000 durable appends of 100 B from one thread: rate, p50 and p99 latency;
//! 4. 4 threads x 500 durable appends of 100 B;
//! 5. reading back workload 1's queue with an ack every 1,000 messages;
//! 6. reopening a 1 GiB queue (1 KiB messages) and reading its first message: 5 times after dropping the page cache
//!    (cold), then 5 times with it warm; the median, with the fastest and slowest run.

mod engines;
mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engines::{Kind, Sync};

/// Results of one engine.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub engine: &'static str,
    pub durable_mode: &'static str,
    pub sync_calls: Option<u64>,
    pub append_100: Option<Rate>,
    pub append_1k: Option<Rate>,
    pub durable: Option<Latency>,
    pub durable_4: Option<Rate>,
    pub read_back: Option<Rate>,
    pub reopen_cold: Option<Spread>,
    pub reopen_warm: Option<Spread>,
    /// The slowest and fastest run of a rate column (msgs/s), by column name, when the engine ran several times.
    pub ranges: std::collections::BTreeMap<&'static str, (f64, f64)>,
    pub notes: Vec<String>,
}

/// Messages per second over `count` messages.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub count: u64,
    pub per_second: f64,
}

impl Rate {
    fn of(count: u64, elapsed: Duration) -> Rate {
        Rate { count, per_second: count as f64 / elapsed.as_secs_f64() }
    }
}

/// Milliseconds over repeated runs: the median, and the fastest and slowest run.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    fn of(mut runs_ms: Vec<f64>) -> Spread {
        assert!(!runs_ms.is_empty());
        runs_ms.sort_by(f64::total_cmp);
        Spread { median_ms: runs_ms[runs_ms.len() / 2], min_ms: runs_ms[0], max_ms: runs_ms[runs_ms.len() - 1] }
    }
}

/// Durable appends: rate and latency percentiles.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub rate: Rate,
    pub p50_us: f64,
    pub p99_us: f64,
}

struct Options {
    scale: u64,
    reopen_bytes: u64,
    out: PathBuf,
    only: Option<Vec<Kind>>,
}

fn parse_args() -> Options {
    let mut options = Options {
        scale: 1,
        reopen_bytes: 1 << 30,
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/peers"),
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => {
                options.scale = 10;
                options.reopen_bytes = 64 << 20;
            }
            "--out" => options.out = PathBuf::from(args.next().expect("--out DIR")),
            "--only" => {
                let names = args.next().expect("--only NAME,...");
                let kinds = names.split(',').map(|n| Kind::parse(n).unwrap_or_else(|| panic!("unknown engine {n}")));
                options.only = Some(kinds.collect());
            }
            "sync-probe" => {
                // Child mode for the strace check: a few durable appends, nothing else.
                let kind = Kind::parse(&args.next().expect("sync-probe ENGINE")).expect("engine");
                sync_probe(kind);
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}; see the module docs"),
        }
    }
    options
}

/// Runs of every workload per engine: each column shows the median run, with the slowest and fastest.
const REPEATS: usize = 3;

fn main() {
    let options = parse_args();
    std::fs::create_dir_all(&options.out).unwrap();
    let kinds = options.only.clone().unwrap_or(Kind::ALL.to_vec());
    let base = tempfile::tempdir_in(std::env::var_os("TMPDIR").unwrap_or("/var/tmp".into())).unwrap();
    let cold = can_drop_caches();
    // Rounds over every engine, rather than one engine's runs back to back: a passing disturbance of the disk or
    // the machine then lands in one run of several engines, and the medians drop it.
    let mut runs: Vec<Vec<Row>> = vec![Vec::new(); kinds.len()];
    for round in 0..REPEATS {
        for (i, &kind) in kinds.iter().enumerate() {
            eprintln!("== {} (run {} of {REPEATS})", kind.name(), round + 1);
            let row = run_engine(kind, base.path(), &options, cold);
            eprintln!("{row:?}");
            runs[i].push(row);
        }
    }
    let rows: Vec<Row> = runs.iter().map(|runs| median_row(runs)).collect();
    let machine = report::machine(base.path(), cold);
    let markdown = report::markdown(&rows, &machine, options.scale);
    std::fs::write(options.out.join("peers.md"), &markdown).unwrap();
    report::chart(&rows, &options.out.join("peers.svg"), &machine);
    println!("{markdown}");
    eprintln!("wrote {} and {}", options.out.join("peers.md").display(), options.out.join("peers.svg").display());
}

/// One engine's runs as one row: each column is its median run's figure, and `ranges` holds the slowest and
/// fastest run of each rate column (reopen spreads: the median of the medians, the extremes of every reopen).
fn median_row(runs: &[Row]) -> Row {
    fn median<T: Copy>(values: Vec<T>, key: impl Fn(&T) -> f64) -> Option<(T, f64, f64)> {
        let mut values = values;
        values.sort_by(|a, b| key(a).total_cmp(&key(b)));
        let (first, last) = (values.first()?, values.last()?);
        Some((values[values.len() / 2], key(first), key(last)))
    }
    let mut row = runs[0].clone();
    let rates: [(&'static str, fn(&Row) -> Option<Rate>, fn(&mut Row) -> &mut Option<Rate>); 4] = [
        ("append_100", |r| r.append_100, |r| &mut r.append_100),
        ("append_1k", |r| r.append_1k, |r| &mut r.append_1k),
        ("durable_4", |r| r.durable_4, |r| &mut r.durable_4),
        ("read_back", |r| r.read_back, |r| &mut r.read_back),
    ];
    for (name, get, set) in rates {
        let picked = median(runs.iter().filter_map(get).collect(), |r| r.per_second);
        *set(&mut row) = picked.map(|(m, _, _)| m);
        if let Some((_, low, high)) = picked {
            row.ranges.insert(name, (low, high));
        }
    }
    let durable = median(runs.iter().filter_map(|r| r.durable).collect(), |d| d.rate.per_second);
    row.durable = durable.map(|(m, _, _)| m);
    if let Some((_, low, high)) = durable {
        row.ranges.insert("durable", (low, high));
    }
    let spread = |get: fn(&Row) -> Option<Spread>| {
        let spreads: Vec<Spread> = runs.iter().filter_map(get).collect();
        let (mid, _, _) = median(spreads.clone(), |s| s.median_ms)?;
        let min_ms = spreads.iter().map(|s| s.min_ms).fold(f64::INFINITY, f64::min);
        let max_ms = spreads.iter().map(|s| s.max_ms).fold(0.0, f64::max);
        Some(Spread { median_ms: mid.median_ms, min_ms, max_ms })
    };
    row.reopen_cold = spread(|r| r.reopen_cold);
    row.reopen_warm = spread(|r| r.reopen_warm);
    row
}

fn payload(size: usize, i: u64) -> Vec<u8> {
    (0..size).map(|j| (i as usize).wrapping_mul(31).wrapping_add(j) as u8).collect()
}

fn fresh(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_engine(kind: Kind, base: &Path, options: &Options, cold: bool) -> Row {
    let mut row = Row { engine: kind.name(), durable_mode: kind.durable_mode(), ..Row::default() };
    if kind == Kind::Commitlog {
        row.notes.push("keeps no consumer position: read back by offset, nothing to ack".into());
    }
    if kind == Kind::WalqBuffered {
        row.notes.push(
            "write_buffer_bytes(256 KiB) in the no-fsync columns: appends and acks wait in the process up to 256 KiB \
             or 5 ms, which a process crash loses (plain walq loses nothing to kill -9); durable columns as walq"
                .into(),
        );
    }
    if kind == Kind::Yaque {
        row.notes.push("reopen opens the receiver, which reads its saved position, then the first message".into());
    }
    row.sync_calls = count_sync_calls(kind);
    let n100 = 1_000_000 / options.scale;
    let n1k = 200_000 / options.scale;
    let read_dir = fresh(base, &format!("{kind:?}-100"));
    if kind.has_no_sync_mode() {
        row.append_100 = Some(appends(kind, &read_dir, Sync::No, n100, 100));
        row.append_1k = Some(appends(kind, &fresh(base, &format!("{kind:?}-1k")), Sync::No, n1k, 1024));
    } else {
        // Every append is durable: measure a tenth as many to keep the run short, and say so.
        row.append_100 = Some(appends(kind, &read_dir, Sync::Durable, n100 / 50, 100));
        row.append_1k = Some(appends(kind, &fresh(base, &format!("{kind:?}-1k")), Sync::Durable, n1k / 10, 1024));
        row.notes.push("no append without fsync: the no-fsync columns are durable appends (fewer measured)".into());
        row.notes
            .push("reads by chunk position; its checkpoint covers a whole segment file, so one ack at the end".into());
    }
    row.read_back = Some(read_back(kind, &read_dir));
    row.durable = Some(durable(kind, &fresh(base, &format!("{kind:?}-durable")), 2_000 / options.scale.min(4)));
    row.durable_4 =
        Some(durable_threads(kind, &fresh(base, &format!("{kind:?}-durable4")), 4, 500 / options.scale.min(4)));
    if kind == Kind::Okaywal {
        row.notes.push("its open replays every chunk not checkpointed: that replay is its first read".into());
    }
    if kind == Kind::Raw {
        row.notes.push("reopen: open the file and read its first record (a raw log has no end to look up)".into());
    }
    let (cold_runs, warm_runs) = reopen(kind, &fresh(base, &format!("{kind:?}-reopen")), options.reopen_bytes, cold);
    row.reopen_cold = cold_runs;
    row.reopen_warm = Some(warm_runs);
    for name in ["100", "1k", "durable", "durable4", "reopen"] {
        let _ = std::fs::remove_dir_all(base.join(format!("{kind:?}-{name}")));
    }
    row
}

fn appends(kind: Kind, dir: &Path, sync: Sync, count: u64, size: usize) -> Rate {
    let fifo = engines::open(kind, dir, sync).unwrap();
    let payloads: Vec<Vec<u8>> = (0..1_000).map(|i| payload(size, i)).collect();
    let start = Instant::now();
    for i in 0..count {
        fifo.append(&payloads[(i % 1_000) as usize]).unwrap();
    }
    fifo.finish().unwrap();
    Rate::of(count, start.elapsed())
}

fn read_back(kind: Kind, dir: &Path) -> Rate {
    let fifo = engines::open(kind, dir, Sync::No).unwrap();
    // okaywal's reader needs the positions its writer kept: reading goes through the same handle there.
    let fifo = if kind == Kind::Okaywal { refill_okaywal(dir) } else { fifo };
    let start = Instant::now();
    let count = fifo.read_all(1_000).unwrap();
    Rate::of(count, start.elapsed())
}

/// okaywal addresses chunks by the positions its writer returned; rebuild a log whose positions we hold.
fn refill_okaywal(dir: &Path) -> Box<dyn engines::Fifo> {
    let dir = fresh(dir, "okaywal-read");
    let fifo = engines::open(Kind::Okaywal, &dir, Sync::Durable).unwrap();
    let payloads: Vec<Vec<u8>> = (0..1_000).map(|i| payload(100, i)).collect();
    for _ in 0..100 {
        fifo.append_many(&payloads).unwrap();
    }
    fifo
}

fn durable(kind: Kind, dir: &Path, count: u64) -> Latency {
    let fifo = engines::open(kind, dir, Sync::Durable).unwrap();
    let data = payload(100, 7);
    let mut latencies_us = Vec::with_capacity(count as usize);
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        fifo.append(&data).unwrap();
        latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let rate = Rate::of(count, start.elapsed());
    latencies_us.sort_by(f64::total_cmp);
    let at = |q: f64| latencies_us[((latencies_us.len() as f64 * q) as usize).min(latencies_us.len() - 1)];
    Latency { rate, p50_us: at(0.50), p99_us: at(0.99) }
}

fn durable_threads(kind: Kind, dir: &Path, threads: usize, per_thread: u64) -> Rate {
    let fifo = engines::open(kind, dir, Sync::Durable).unwrap();
    let data = payload(100, 9);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (fifo, data) = (&fifo, &data);
            scope.spawn(move || {
                for _ in 0..per_thread {
                    fifo.append(data).unwrap();
                }
            });
        }
    });
    Rate::of(threads as u64 * per_thread, start.elapsed())
}

/// Repetitions of each reopen measurement.
const REOPENS: usize = 5;

/// Builds a queue of `bytes` in 1 KiB messages (batched, not timed), closes it, and times reopening it and reading
/// its first message: `REOPENS` times after dropping the page cache (when `cold` is possible), then `REOPENS`
/// times warm. In milliseconds.
fn reopen(kind: Kind, dir: &Path, bytes: u64, cold: bool) -> (Option<Spread>, Spread) {
    {
        let fifo = engines::open(kind, dir, Sync::No).unwrap();
        let batch: Vec<Vec<u8>> = (0..1_000).map(|i| payload(1024, i)).collect();
        for _ in 0..bytes / (1024 * 1_000) {
            fifo.append_many(&batch).unwrap();
        }
        fifo.finish().unwrap();
    }
    let once = |drop_cache: bool| {
        if drop_cache {
            drop_caches();
        }
        let start = Instant::now();
        let (opened, first_len) = engines::reopen(kind, dir).unwrap();
        let elapsed = start.elapsed();
        assert!(first_len > 0, "{}: the first message is read", kind.name());
        drop(opened);
        elapsed.as_secs_f64() * 1e3
    };
    let cold_runs = cold.then(|| Spread::of((0..REOPENS).map(|_| once(true)).collect()));
    once(false); // the page cache holds what a reopen reads
    let warm_runs = Spread::of((0..REOPENS).map(|_| once(false)).collect());
    (cold_runs, warm_runs)
}

fn can_drop_caches() -> bool {
    std::fs::OpenOptions::new().write(true).open("/proc/sys/vm/drop_caches").is_ok()
}

fn drop_caches() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").unwrap();
}

/// The child of the strace check: 100 durable appends.
fn sync_probe(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = engines::open(kind, dir.path(), Sync::Durable).unwrap();
    let data = payload(100, 1);
    for _ in 0..100 {
        fifo.append(&data).unwrap();
    }
}

/// Runs 100 durable appends of `kind` under `strace -f` and counts the engine's own fsync-family calls (not the
/// `syncfs` the bench adds to engines without them). `None` if strace is not there.
fn count_sync_calls(kind: Kind) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let output = std::process::Command::new("strace")
        .args(["-f", "-c", "-e", "trace=fsync,fdatasync,msync,sync_file_range", "-o", "/dev/stderr"])
        .arg(exe)
        .args(["sync-probe", kind.name().split(' ').next().unwrap()])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stderr);
    // The summary's "total" line: "100.00  0.012345  123  456  [errors]  total": calls are the 4th column. No
    // line at all when no traced call was made.
    let Some(total) = text.lines().find(|line| line.trim_end().ends_with("total")) else { return Some(0) };
    total.split_whitespace().nth(3)?.parse().ok()
}
