use std::time::Instant;
use walq::{Durability, Queue};
fn main() {
    let n: u64 = std::env::args().nth(1).map_or(10_000_000, |a| a.parse().unwrap());
    let size: usize = std::env::args().nth(2).map_or(100, |a| a.parse().unwrap());
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::None).write_buffer_bytes(256 * 1024).open().unwrap();
    let payload = vec![0x5Au8; size];
    let start = Instant::now();
    for _ in 0..n {
        queue.append_bytes(&payload).unwrap();
    }
    let el = start.elapsed();
    println!("{:.1} ns/append", el.as_nanos() as f64 / n as f64);
}
