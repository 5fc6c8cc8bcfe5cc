use std::time::Instant;
use walq::{Durability, Message, Queue};
fn main() {
    let n: u64 = std::env::args().nth(1).map_or(5_000_000, |a| a.parse().unwrap());
    let consumers: usize = std::env::args().nth(2).map_or(1, |a| a.parse().unwrap());
    let each = std::env::args().nth(3).is_some_and(|a| a == "each");
    let temp = tempfile::tempdir().unwrap();
    let queue = Queue::builder(temp.path()).durability(Durability::None).open().unwrap();
    let batch: Vec<Message> = (0..1000).map(|_| Message::new(vec![0x5Au8; 100])).collect();
    for _ in 0..n / 1000 {
        queue.append_batch(&batch).unwrap();
    }
    let group = queue.group("g").unwrap();
    eprintln!("ready");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..consumers {
            let consumer = group.consumer();
            scope.spawn(move || {
                if each {
                    while let Some(d) = consumer.try_recv().unwrap() {
                        d.ack().unwrap();
                    }
                } else {
                    loop {
                        let d = consumer.try_recv_batch(1000).unwrap();
                        if d.is_empty() {
                            break;
                        }
                        consumer.ack_all(d).unwrap();
                    }
                }
            });
        }
    });
    let el = start.elapsed();
    println!("{:.2} M/s", n as f64 / el.as_secs_f64() / 1e6);
}
