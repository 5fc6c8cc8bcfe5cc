//! A queue the tool opens itself, or, when a running process owns it and serves it
//! ([`walq::remote::Sharing`]), uses through that process: `produce`, `consume` and the group commands work on a
//! live queue without stopping its service.

use std::path::Path;

use walq::remote::{RemoteQueue, SharedDelivery};
use walq::{Error, Message, Offset, Queue};

/// The queue, owned by the tool or by another process.
pub enum Target {
    Own(Queue),
    Owner(RemoteQueue),
}

impl Target {
    /// Opens the queue in `dir`; a queue another process holds is used through it if it serves, and is
    /// [`Error::Locked`] otherwise (as without this).
    pub fn open(dir: &Path) -> walq::Result<Target> {
        match Queue::open(dir) {
            Ok(queue) => Ok(Target::Own(queue)),
            Err(Error::Locked { dir }) => match RemoteQueue::connect(&dir) {
                Ok(remote) => {
                    eprintln!("queue {} is open in process {}: working through it", dir.display(), remote.owner_pid());
                    Ok(Target::Owner(remote))
                }
                Err(Error::NotServed { .. }) => Err(Error::Locked { dir }),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        }
    }

    pub fn append(&self, message: Message) -> walq::Result<Offset> {
        match self {
            Target::Own(queue) => queue.append(message),
            Target::Owner(remote) => remote.append(message),
        }
    }

    pub fn append_batch(&self, messages: &[Message]) -> walq::Result<Offset> {
        match self {
            Target::Own(queue) => queue.append_batch(messages),
            Target::Owner(remote) => remote.append_batch(messages),
        }
    }

    /// As [`Queue::delete_group`].
    pub fn delete_group(&self, name: &str) -> walq::Result<bool> {
        match self {
            Target::Own(queue) => queue.delete_group(name),
            Target::Owner(remote) => remote.delete_group(name),
        }
    }

    /// As [`Queue::reset_group`].
    pub fn reset_group(&self, name: &str, to: walq::StartAt) -> walq::Result<Offset> {
        match self {
            Target::Own(queue) => queue.reset_group(name, to),
            Target::Owner(remote) => remote.reset_group(name, to),
        }
    }

    /// As [`walq::Group::redrive`] of the existing group `name`.
    pub fn redrive(&self, name: &str, offset: Offset) -> walq::Result<bool> {
        match self {
            Target::Own(queue) => queue.existing_group(name)?.redrive(offset),
            Target::Owner(remote) => remote.existing_group(name)?.redrive(offset),
        }
    }

    /// Closes a queue the tool owns; a connection to an owner just ends.
    pub fn close(&self) -> walq::Result<()> {
        match self {
            Target::Own(queue) => queue.close(),
            Target::Owner(_) => Ok(()),
        }
    }
}

/// A consumer on a [`Target`].
pub enum Consumer {
    Own(walq::Consumer),
    Owner(walq::remote::RemoteConsumer),
}

impl Consumer {
    pub fn of(target: &Target, group: &str) -> walq::Result<Consumer> {
        match target {
            Target::Own(queue) => Ok(Consumer::Own(queue.group(group)?.consumer())),
            Target::Owner(remote) => Ok(Consumer::Owner(remote.group(group)?.consumer()?)),
        }
    }

    pub fn try_recv(&self) -> walq::Result<Option<SharedDelivery>> {
        match self {
            Consumer::Own(consumer) => Ok(consumer.try_recv()?.map(SharedDelivery::Owner)),
            Consumer::Owner(consumer) => Ok(consumer.try_recv()?.map(SharedDelivery::Client)),
        }
    }

    pub fn recv_timeout(&self, timeout: std::time::Duration) -> walq::Result<Option<SharedDelivery>> {
        match self {
            Consumer::Own(consumer) => Ok(consumer.recv_timeout(timeout)?.map(SharedDelivery::Owner)),
            Consumer::Owner(consumer) => Ok(consumer.recv_timeout(timeout)?.map(SharedDelivery::Client)),
        }
    }
}
