use std::sync::Arc;
use walq::storage::{FaultKind, FaultPlan, FaultyStorage, Storage};
use walq::*;
#[test]
fn dbg() {
    // replicate workload quickly through the test binary's logic is not shared; re-implement minimal
    let storage = FaultyStorage::new();
    storage.set_plan(Some(FaultPlan { at_op: 329, kind: FaultKind::Crash, persistent: false }));
    let b = |s: &FaultyStorage| {
        Queue::builder("/sim/queue")
            .storage(Arc::new(s.clone()) as Arc<dyn Storage>)
            .segment_bytes_max(64 * 1024)
            .message_bytes_max(4096)
            .durability(Durability::GroupCommit)
            .preallocation(Preallocation::Reserve)
    };
    let sim_message = |i: u64| {
        let len = 200 + (i * 7919 % 1300) as usize;
        let value: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
        Message::new(value)
            .key(format!("k{}", i % 13).into_bytes())
            .timestamp_ms(i)
            .header("i", i.to_le_bytes().to_vec())
    };
    let mut rng = walq::storage::FaultRng::new(101);
    let mut acked = 0u64;
    let _ = (|| -> walq::Result<()> {
        let q = b(&storage).open()?;
        while acked < 130 {
            q.append(sim_message(acked))?;
            acked += 1;
        }
        q.close()?;
        let q = b(&storage).open()?;
        while acked < 260 {
            let n = (1 + rng.below(7)).min(260 - acked);
            let batch: Vec<Message> = (acked..acked + n).map(sim_message).collect();
            q.append_batch(&batch)?;
            acked += n;
        }
        q.close()
    })();
    eprintln!("acked {acked}");
    let image = storage.crash_image(101005578);
    for (p, bytes) in image.snapshot() {
        eprintln!("{} {}", p.display(), bytes.len());
    }
    let pre = walq::inspect::Inspector::open_with("/sim/queue", Arc::new(image.clean_image()))
        .unwrap()
        .recovery_preview(RecoveryMode::TolerateTornTail)
        .unwrap();
    eprintln!("preview {pre:?}");
    let q = b(&image).open().unwrap();
    eprintln!("report {:?}", q.recovery_report());
    let mut n = 0;
    for r in q.read_from(Offset::EARLIEST).unwrap() {
        match r {
            Ok(_) => n += 1,
            Err(e) => {
                eprintln!("after {n}: {e}");
                break;
            }
        }
    }
    for (p, bytes) in image.snapshot() {
        eprintln!("{} {}", p.display(), bytes.len());
    }
}
