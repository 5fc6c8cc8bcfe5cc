//! SIGINT and SIGTERM as a flag: `produce` and `consume` check it, finish what they hold and close the queue
//! cleanly (an unclean exit makes the next open scan the whole preallocated segment). A second signal while the
//! first is being handled exits at once with code 1.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

/// Raised by SIGINT or SIGTERM.
#[derive(Debug, Clone)]
pub struct StopSignal(Arc<AtomicBool>);

impl StopSignal {
    /// Installs the handlers. Fails only if the operating system refuses them.
    pub fn install() -> walq::Result<StopSignal> {
        let flag = Arc::new(AtomicBool::new(false));
        let install = |signal| {
            // The conditional shutdown first: it sees the flag as the first signal left it.
            signal_hook::flag::register_conditional_shutdown(signal, 1, flag.clone())?;
            signal_hook::flag::register(signal, flag.clone())
        };
        for signal in [SIGINT, SIGTERM] {
            install(signal).map_err(|source| walq::Error::Io {
                operation: "install signal handler",
                path: std::path::PathBuf::from("-"),
                source,
            })?;
        }
        Ok(StopSignal(flag))
    }

    /// Whether a stop was asked for.
    pub fn raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
