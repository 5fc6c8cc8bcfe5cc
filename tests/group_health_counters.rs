//! Per-group running counters (#22 item 4): `GroupStats` counts acks, nacks, dropped deliveries, expired leases,
//! dead letters and discards since open, each once per event; reading them changes nothing.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn each_answer_is_counted_once_by_its_kind() {
    let temp = tempfile::tempdir().unwrap();
    let queue = small(temp.path()).max_deliveries(2).ack_timeout(Duration::from_millis(100)).open().unwrap();
    append_range(&queue, 0..6);
    let group = queue.group("workers").unwrap();
    let consumer = group.consumer();
    let take = || consumer.try_recv().unwrap().expect("a message is ready");

    take().ack().unwrap(); // 0 acked
    take().retry().unwrap(); // 1 nacked (attempt 1 of 2)
    drop(take()); // 1 again (redelivered first): dropped on its last attempt, dead-lettered
    let batch = consumer.try_recv_batch(2).unwrap(); // 2, 3
    consumer.ack_all(batch).unwrap();
    take().dead_letter().unwrap(); // 4
    let held = take(); // 5: its lease expires
    std::thread::sleep(Duration::from_millis(150));
    let again = take(); // expiry found by the take: 5, attempt 2
    assert_eq!(again.attempt(), 2);
    drop(held);
    again.ack().unwrap();

    let stats = group.stats();
    assert_eq!(stats.acked, 4, "0, 2, 3, 5");
    assert_eq!(stats.nacked, 1);
    assert_eq!(stats.dropped, 1, "the drop of a lease that had expired is not counted again");
    assert_eq!(stats.expired, 1);
    assert_eq!(stats.dead_lettered, 2, "1 by attempts, 4 by dead_letter");
    assert_eq!(stats.discarded, 0);
    assert_eq!(stats.deliveries, 8, "0, 1, 1, 2, 3, 4, 5, 5");
    assert_eq!(stats.redeliveries, 2);
    assert!(group.discard(walq::Offset(4)).unwrap());
    assert!(!group.discard(walq::Offset(4)).unwrap(), "discarded once");
    let stats = group.stats();
    assert_eq!((stats.discarded, stats.dead_letters), (1, 1));
    // Reading is free of side effects: the same numbers again.
    assert_eq!(group.stats(), stats);
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["dead_lettered"], 2);
}
