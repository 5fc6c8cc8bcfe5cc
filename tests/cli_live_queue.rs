//! The tool on a live queue: `produce`, `consume`, `groups --reset/--delete` and `redrive` work through the process
//! that owns the queue when it serves others, without stopping it; a peek (`consume --no-ack`) is refused there
//! (through an owner it would count attempts); and a queue whose owner does not serve is still `Locked`.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use walq::remote::Sharing;
use walq::{Message, Offset, Queue};

fn walq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walq")).args(args).env("NO_COLOR", "1").output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_tool_works_through_a_serving_owner() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_str().unwrap();
    let owner = Queue::builder(temp.path()).sharing(Sharing::Serve).max_deliveries(1).open().unwrap();
    let mut produce = Command::new(env!("CARGO_BIN_EXE_walq"))
        .args(["produce", dir])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    produce.stdin.take().unwrap().write_all(b"one\ntwo\nthree\n").unwrap();
    let produced = produce.wait_with_output().unwrap();
    assert!(produced.status.success(), "{}", stderr(&produced));
    assert!(stderr(&produced).contains(&format!("open in process {}", std::process::id())));
    let values: Vec<_> = owner.read_from(Offset(0)).unwrap().map(|r| r.unwrap().value.unwrap()).collect();
    assert_eq!(values, [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);

    let consumed = walq(&["consume", dir, "--group", "billing", "--count", "2", "--format", "json"]);
    assert!(consumed.status.success(), "{}", stderr(&consumed));
    let lines = String::from_utf8(consumed.stdout).unwrap();
    assert_eq!(lines.lines().count(), 2);
    assert!(lines.contains("\"value\":\"one\"") && lines.contains("\"value\":\"two\""), "{lines}");
    let billing = owner.existing_group("billing").unwrap();
    assert_eq!(billing.ack_floor(), Offset(2), "acked through the owner");

    let peek = walq(&["consume", dir, "--group", "billing", "--no-ack"]);
    assert!(!peek.status.success());
    assert!(stderr(&peek).contains("--no-ack"), "{}", stderr(&peek));
    assert_eq!(billing.stats().deliveries, 2, "the refused peek delivered nothing");

    let reset = walq(&["groups", dir, "--reset", "billing", "--to", "earliest"]);
    assert!(reset.status.success(), "{}", stderr(&reset));
    assert_eq!(billing.ack_floor(), Offset(0));

    // A dead letter (max_deliveries 1: one failure sets it aside), put back by `redrive`.
    let delivery = billing.consumer().try_recv().unwrap().unwrap();
    assert_eq!(delivery.offset(), Offset(0));
    delivery.fail("boom").unwrap();
    assert_eq!(billing.dead_letters().len(), 1);
    let redriven = walq(&["redrive", dir, "billing", "0"]);
    assert!(redriven.status.success(), "{}", stderr(&redriven));
    assert!(billing.dead_letters().is_empty());
    assert_eq!(billing.consumer().recv_timeout(Duration::from_secs(5)).unwrap().unwrap().offset(), Offset(0));
    let not_dead = walq(&["redrive", dir, "billing", "2"]);
    assert_eq!(not_dead.status.code(), Some(1), "{}", stderr(&not_dead));

    owner.group("mistyped").unwrap();
    let deleted = walq(&["groups", dir, "--delete", "mistyped"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(!owner.groups().contains(&"mistyped".to_string()));
    owner.append(Message::new("still mine")).unwrap();
}

#[test]
fn an_owner_that_does_not_serve_still_means_locked() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_str().unwrap();
    let _owner = Queue::open(temp.path()).unwrap();
    let produced =
        Command::new(env!("CARGO_BIN_EXE_walq")).args(["produce", dir]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(produced.status.code(), Some(1));
    assert!(stderr(&produced).contains("locked"), "{}", stderr(&produced));
}
