//! Takeover under `kill -9`: an owner process, two producer processes and two consumer processes share one queue
//! through `SharedQueue`. Each cycle kills the owner with SIGKILL (every fourth cycle a client instead) at a moment
//! of its work; a survivor takes the queue over and the others carry on without a restart; the killed process is
//! replaced by a new one of its role. At the end: every append acknowledged to a producer is in the log at its
//! offset, byte-exact; every message was consumed (the group's floor is the log's end); no message was delivered
//! after an ack of it was acknowledged; and the time from each kill of an owner to a new owner serving is reported.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use walq::remote::{RemoteQueue, SharedQueue};
use walq::{Durability, Message, Offset, Queue, QueueBuilder};

const ROLE: &str = "WALQ_TAKEOVER_ROLE";
const DIR: &str = "WALQ_TAKEOVER_DIR";
const ID: &str = "WALQ_TAKEOVER_ID";
/// Created by the parent when producers are to stop.
const STOP_FILE: &str = "stop-producing";

fn builder(dir: &str) -> QueueBuilder {
    // Leases long enough that no message comes back by expiry while its consumer lives; attempts enough that
    // the deliveries kills interrupt never make a dead letter.
    Queue::builder(dir).durability(Durability::None).ack_timeout(Duration::from_secs(600)).max_deliveries(1_000)
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// The roles a child plays (`WALQ_TAKEOVER_ROLE`); each prints what was acknowledged to it, one line each.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let dir = std::env::var(DIR).unwrap();
    let id: u64 = std::env::var(ID).unwrap().parse().unwrap();
    let queue = SharedQueue::open(builder(&dir)).unwrap();
    println!("READY {}", std::process::id());
    match role.as_str() {
        "idle" => std::thread::sleep(Duration::from_secs(3_600)),
        "produce" => {
            let mut seq = 0u64;
            while !Path::new(&dir).join(STOP_FILE).exists() {
                let value = format!("{id}:{seq}");
                // An error (the owner went mid-call) leaves the outcome unknown: not reported, and not retried.
                if let Ok(offset) = queue.append(Message::new(value.clone())) {
                    println!("APPENDED {} {value}", offset.0);
                }
                seq += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            println!("DONE");
        }
        "consume" => {
            let consumer = queue.consumer("g").unwrap();
            loop {
                let delivery = match consumer.recv_timeout(Duration::from_secs(3)) {
                    Ok(Some(delivery)) => delivery,
                    Ok(None) if Path::new(&dir).join(STOP_FILE).exists() => break,
                    Ok(None) | Err(_) => continue,
                };
                let offset = delivery.offset().0;
                println!("DELIVERED {offset} {}", now_ns());
                if delivery.ack().is_ok() {
                    println!("ACKED {offset} {}", now_ns());
                }
            }
            println!("DONE");
        }
        other => panic!("unknown role {other}"),
    }
}

/// A child process and the lines it printed so far.
struct Worker {
    role: &'static str,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn spawn(role: &'static str, dir: &Path, id: u64) -> Worker {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(DIR, dir)
            .env(ID, id.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (stdout, sink) = (child.stdout.take().unwrap(), lines.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may print its own words before a child's first line.
                let start =
                    ["READY", "APPENDED", "DELIVERED", "ACKED", "DONE"].iter().filter_map(|p| line.find(p)).min();
                if let Some(start) = start {
                    sink.lock().unwrap().push(line[start..].to_owned());
                }
            }
        });
        let worker = Worker { role, child, lines, reader: Some(reader) };
        let started = Instant::now();
        while !worker.lines.lock().unwrap().iter().any(|l| l.starts_with("READY")) {
            assert!(started.elapsed() < Duration::from_secs(30), "a {role} process did not start");
            std::thread::sleep(Duration::from_millis(2));
        }
        worker
    }

    fn kill(mut self) -> Vec<String> {
        self.child.kill().unwrap(); // SIGKILL
        self.finish()
    }

    /// Waits for the process to end by itself (60 s at most: a worker that cannot end is a failure, not a hang).
    fn finish(mut self) -> Vec<String> {
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(60) {
                self.child.kill().unwrap();
                panic!("a {} process did not finish within 60 s of the stop", self.role);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.reader.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

impl Drop for Worker {
    /// A test that fails part way kills what it started: no process outlives it, taking the queue over.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid of the process serving the queue once one does (not `gone`), and how long that took.
fn serving_owner(dir: &Path, gone: u32) -> (u32, Duration) {
    let started = Instant::now();
    loop {
        if let Ok(remote) = RemoteQueue::connect(dir) {
            if remote.owner_pid() != gone && remote.stats().is_ok() {
                return (remote.owner_pid(), started.elapsed());
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no process took the queue over");
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn survivors_take_over_from_a_killed_owner_and_nothing_acknowledged_is_lost() {
    let cycles = 100 * common::soak();
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    let mut next_id = 0;
    let mut spawn = |role| {
        next_id += 1;
        Worker::spawn(role, &dir, next_id)
    };
    let mut workers = vec![spawn("idle")];
    for role in ["produce", "produce", "consume", "consume"] {
        workers.push(spawn(role));
    }
    let mut lines: Vec<String> = Vec::new();
    let mut takeover_times = Vec::new();
    let mut seed = common::env_u64("WALQ_SEED").unwrap_or(0x5eed);
    let mut random = |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_millis(20 + random(80)));
        let (owner_pid, _) = serving_owner(&dir, 0);
        let victim = if cycle % 4 == 3 {
            random(workers.len() as u64) as usize // sometimes a client (or the owner, by chance)
        } else {
            workers.iter().position(|w| w.child.id() == owner_pid).expect("the owner is one of the workers")
        };
        let killed = workers.swap_remove(victim);
        let (role, pid) = (killed.role, killed.child.id());
        lines.extend(killed.kill());
        if pid == owner_pid {
            let (_, took) = serving_owner(&dir, pid);
            takeover_times.push(took);
        }
        workers.push(spawn(role));
    }
    std::fs::write(dir.join(STOP_FILE), b"").unwrap();
    for worker in workers.drain(..) {
        if worker.role == "idle" {
            lines.extend(worker.kill());
        } else {
            lines.extend(worker.finish());
        }
    }
    // Every process has exited: the queue is checked on its own.
    let queue = Queue::open(&dir).unwrap();
    let mut appended = BTreeMap::new();
    let (mut delivered, mut acked): (Vec<(u64, u128)>, BTreeMap<u64, u128>) = (Vec::new(), BTreeMap::new());
    for line in &lines {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[0] {
            "APPENDED" => assert!(appended.insert(fields[1].parse::<u64>().unwrap(), fields[2]).is_none()),
            "DELIVERED" => delivered.push((fields[1].parse().unwrap(), fields[2].parse().unwrap())),
            "ACKED" => {
                let at: u128 = fields[2].parse().unwrap();
                let first = acked.entry(fields[1].parse().unwrap()).or_insert(at);
                *first = (*first).min(at);
            }
            _ => {}
        }
    }
    let mut violations = 0;
    for (offset, value) in &appended {
        let record = queue.get(Offset(*offset)).unwrap();
        if record.as_ref().and_then(|r| r.value.as_deref()) != Some(value.as_bytes()) {
            violations += 1;
            eprintln!("acknowledged append at {offset} ({value}) is {record:?}");
        }
    }
    for (offset, at) in &delivered {
        if acked.get(offset).is_some_and(|acked_at| acked_at < at) {
            violations += 1;
            eprintln!("offset {offset} delivered after its ack was acknowledged");
        }
    }
    let next_offset = queue.stats().next_offset;
    let group = queue.existing_group("g").unwrap();
    let floor = group.ack_floor();
    if !group.dead_letters().is_empty() {
        violations += 1;
        eprintln!("dead letters: {:?} (no consumer failed a message)", group.dead_letters());
    }
    if floor != next_offset {
        violations += 1;
        eprintln!("the group's floor is {floor:?}, the log ends at {next_offset:?}: messages were skipped or stranded");
    }
    takeover_times.sort_unstable();
    let percentile = |p: usize| takeover_times[(takeover_times.len() - 1) * p / 100];
    println!(
        "takeover after kill -9 of the owner: {} times, median {:?}, p99 {:?}, max {:?}",
        takeover_times.len(),
        percentile(50),
        percentile(99),
        takeover_times.last().unwrap()
    );
    common::report(
        "R14",
        &format!(
            "kill -9 of the owner (every 4th cycle a client) among 2 producer and 2 consumer processes: {} appends acknowledged, all consumed; takeover median {} ms, p99 {} ms",
            appended.len(),
            percentile(50).as_millis(),
            percentile(99).as_millis()
        ),
        cycles,
        "cycles",
        violations,
    );
    assert_eq!(violations, 0);
    assert!(appended.len() as u64 > cycles, "the producers worked: {} appends", appended.len());
    assert!(!delivered.is_empty() && !acked.is_empty(), "the consumers worked");
}
