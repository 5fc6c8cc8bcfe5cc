//! A review found that a group scheduled its journaled retry delays before clamping its state to the log's end.
//! Without durable appends, a crash can lose the log's tail while the group's journal keeps a delay for an offset
//! in it: after the restart that delay stayed scheduled for an offset the log no longer held, and came due against
//! the message appended later at that offset (delivered twice in one take, or recorded `Gone` and skipped). The
//! state is now clamped first, which drops the delay.

mod common;

use std::time::Duration;

use common::*;
use walq::storage::FaultyStorage;
use walq::{Durability, Offset};

#[test]
fn a_delay_for_an_offset_the_crash_lost_does_not_skip_the_message_appended_there_later() {
    let storage = FaultyStorage::new();
    // `Sync`, so that the journal's delays are durable; the lost tail is made by hand below (what a crash does
    // to appends that were not durable, under `None` or `Interval`).
    let queue = sim_builder(&storage).durability(Durability::Sync).open().unwrap();
    append_range(&queue, 0..8);
    let group = queue.group("g").unwrap();
    let consumer = group.consumer();
    let taken = consumer.try_recv_batch(8).unwrap();
    for delivery in taken {
        if delivery.offset().0 >= 4 {
            delivery.nack(Duration::from_millis(100)).unwrap();
        } else {
            delivery.ack().unwrap();
        }
    }
    // The crash loses the log's tail past offset 4 but not the journal: cut the image's segment to 4 messages.
    let image = storage.crash_image(0);
    drop((consumer, group, queue));
    let cut = {
        let probe = FaultyStorage::new();
        let queue = sim_builder(&probe).durability(Durability::None).open().unwrap();
        append_range(&queue, 0..4);
        queue.close().unwrap();
        probe
    };
    let segment = sim_segment_names(&image)[0].clone();
    let short = cut.snapshot()[&sim_path(&sim_segment_names(&cut)[0])].clone();
    image.corrupt_file(&sim_path(&segment), |bytes| {
        // Keep this queue's own header and first four frames: the frames are the same bytes in both queues
        // except for the segment id each frame's checksum covers, so cut at the length of the probe's four.
        bytes.truncate(short.len());
    });

    let queue = sim_builder(&image).durability(Durability::Sync).open().unwrap();
    assert_eq!(queue.stats().next_offset, Offset(4), "the tail is lost");
    append_range(&queue, 4..8); // the same offsets again, new messages
    std::thread::sleep(Duration::from_millis(200)); // past the lost delays
    let consumer = queue.existing_group("g").unwrap().consumer();
    let delivered: Vec<u64> = consumer.try_recv_batch(10).unwrap().iter().map(|d| d.offset().0).collect();
    assert_eq!(delivered, vec![4, 5, 6, 7], "every message appended after the crash is delivered");
}
