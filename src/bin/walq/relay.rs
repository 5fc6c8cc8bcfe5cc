//! `walq relay DIR --group G --server URL --subject S`: drain a consumer group into NATS JetStream.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use walq::relay::{Relay, RelayConfig, RelayHandle, RelayStats, StopWhen, SubjectMode};
use walq::Queue;

use crate::Format;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The queue directory.
    dir: PathBuf,
    /// The consumer group to drain (created on first use). Its ack floor is the relay's progress.
    #[arg(long)]
    group: String,
    /// The NATS server, e.g. nats://127.0.0.1:4222 (a comma-separated list for a cluster).
    #[arg(long)]
    server: String,
    /// The subject to publish to.
    #[arg(long)]
    subject: String,
    /// Create this JetStream stream, capturing the subject, if it does not exist.
    #[arg(long)]
    stream: Option<String>,
    /// Duplicate window, in seconds, of a stream created by --stream.
    #[arg(long, default_value_t = walq::relay::DUPLICATE_WINDOW_DEFAULT.as_secs())]
    duplicate_window_secs: u64,
    /// Publish to SUBJECT.<key> (keys that are not a safe token as `=` + hex) instead of SUBJECT.
    #[arg(long)]
    key_subject: bool,
    /// Publishes awaiting their acknowledgement at once.
    #[arg(long, default_value_t = walq::relay::WINDOW_DEFAULT)]
    window: usize,
    /// Exit once nothing is outstanding and no message is ready, instead of waiting for new ones.
    #[arg(long)]
    until_idle: bool,
    /// With --until-idle: give up (exit 1) after this many seconds without a connection to the server (default
    /// 30), instead of retrying for ever (without --until-idle the relay is a service, and keeps retrying).
    #[arg(long, requires = "until_idle", value_parser = clap::value_parser!(u64).range(1..))]
    give_up_secs: Option<u64>,
    /// Print progress this often, in milliseconds (0: only at the end).
    #[arg(long, default_value_t = 1000)]
    progress_ms: u64,
}

/// Runs the relay until SIGINT/SIGTERM (or, with --until-idle, until drained); prints progress to standard error
/// and the final counts to standard output.
pub fn run(args: Args, format: Format) -> ExitCode {
    let server = args.server.clone();
    match relay(args, format) {
        Ok(Ended::Drained) => ExitCode::SUCCESS,
        Ok(Ended::GaveUp { after, last_error }) => {
            // The client retries quietly: a plain TCP connect says what the network says (refused, unreachable).
            let last = probe(&server).or(last_error).map(|e| format!(" ({e})")).unwrap_or_default();
            let error =
                format!("no connection to the NATS server at {server} for {} s; gave up{last}", after.as_secs());
            crate::output::print_error(format, &error, Some("the messages not relayed stay in the group"));
            ExitCode::from(1)
        }
        Err(error) => {
            crate::output::print_error(format, &error.to_string(), None);
            match error {
                walq::relay::RelayError::Queue(walq::Error::Corrupt { .. }) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}

/// Why a TCP connection to the first server of `servers` fails, if it does.
fn probe(servers: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    let first = servers.split(',').next()?.trim();
    let host_port = first.split_once("://").map_or(first, |(_, rest)| rest);
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, rest)| rest);
    let with_port = if host_port.contains(':') { host_port.to_string() } else { format!("{host_port}:4222") };
    let address = match with_port.to_socket_addrs() {
        Ok(mut addresses) => addresses.next()?,
        Err(error) => return Some(format!("resolving {with_port}: {error}")),
    };
    match std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
        Ok(_) => None,
        Err(error) => Some(format!("connecting to {address}: {error}")),
    }
}

/// `--give-up-secs` when not given.
const GIVE_UP_SECS_DEFAULT: u64 = 30;

/// How a relay run ended without an error.
enum Ended {
    /// Drained (--until-idle) or stopped by a signal.
    Drained,
    /// --until-idle found no server for `after`: the messages not relayed stay in the group.
    GaveUp { after: Duration, last_error: Option<String> },
}

fn relay(args: Args, format: Format) -> Result<Ended, walq::relay::RelayError> {
    let queue = Queue::open(&args.dir)?;
    let mode = if args.key_subject { SubjectMode::KeyToken } else { SubjectMode::Fixed };
    let stop_when = if args.until_idle { StopWhen::Idle } else { StopWhen::Stopped };
    let mut config = RelayConfig::new(&args.server, &args.subject)
        .subject_mode(mode)
        .window(args.window)
        .duplicate_window(Duration::from_secs(args.duplicate_window_secs))
        .stop_when(stop_when);
    if let Some(stream) = &args.stream {
        config = config.create_stream(stream);
    }
    if args.until_idle {
        // Giving up on an unreachable server must not then wait the whole drain for acknowledgements that
        // cannot come.
        let give_up = Duration::from_secs(args.give_up_secs.unwrap_or(GIVE_UP_SECS_DEFAULT));
        let bound = give_up.min(walq::relay::DRAIN_TIMEOUT_DEFAULT);
        config = config.drain_timeout(bound);
    }
    let relay = Relay::new(&queue, &args.group, config)?;
    let handle = relay.handle();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(walq::relay::RelayError::Runtime)?;
    let give_up = args.until_idle.then(|| Duration::from_secs(args.give_up_secs.unwrap_or(GIVE_UP_SECS_DEFAULT)));
    let (stats, gave_up) = runtime.block_on(async {
        tokio::spawn(stop_on_signal(handle.clone()));
        if args.progress_ms > 0 {
            tokio::spawn(report_progress(handle.clone(), Duration::from_millis(args.progress_ms), format));
        }
        let watchdog = give_up.map(|after| tokio::spawn(give_up_unconnected(handle.clone(), after)));
        let stats = relay.run().await;
        let gave_up = match watchdog {
            Some(watchdog) if watchdog.is_finished() => watchdog.await.unwrap_or(false),
            _ => false,
        };
        stats.map(|stats| (stats, gave_up))
    })?;
    queue.close()?;
    print_stats(&stats, format, Line::Final);
    match give_up {
        Some(after) if gave_up => Ok(Ended::GaveUp { after, last_error: stats.last_error }),
        _ => Ok(Ended::Drained),
    }
}

/// Stops the relay once it has had no connection for `after` on end; returns whether it did.
async fn give_up_unconnected(handle: RelayHandle, after: Duration) -> bool {
    const CHECK: Duration = Duration::from_millis(200);
    let mut unconnected_since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(CHECK).await;
        if handle.stats().connected {
            unconnected_since = tokio::time::Instant::now();
        } else if unconnected_since.elapsed() >= after {
            handle.stop();
            return true;
        }
    }
}

async fn stop_on_signal(handle: RelayHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        eprintln!("walq: warning: cannot catch SIGINT/SIGTERM; they will stop the relay without draining");
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("walq: stopping: waiting for outstanding acknowledgements");
    handle.stop();
}

async fn report_progress(handle: RelayHandle, every: Duration, format: Format) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await; // the first tick is immediate
    loop {
        ticks.tick().await;
        print_stats(&handle.stats(), format, Line::Progress);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Progress,
    Final,
}

/// Progress lines go to standard error in the table format (standard output stays the result); JSON lines all
/// go to standard output, each with its kind.
fn print_stats(stats: &RelayStats, format: Format, line: Line) {
    let kind = match line {
        Line::Progress => "progress",
        Line::Final => "final",
    };
    match format {
        Format::Json => {
            let mut value = serde_json::to_value(stats).expect("stats serialize");
            value["kind"] = kind.into();
            crate::out!("{value}");
        }
        Format::Table => {
            let text = format!(
                "{kind}: relayed {} (duplicates {}), lag {}, in flight {}, retries {}, rejected {}, {}{}",
                stats.relayed,
                stats.duplicates,
                stats.lag,
                stats.in_flight,
                stats.retries,
                stats.rejected,
                if stats.connected { "connected" } else { "not connected" },
                stats.last_error.as_ref().map(|e| format!(", last error: {e}")).unwrap_or_default(),
            );
            match line {
                Line::Progress => eprintln!("{text}"),
                Line::Final => crate::out!("{text}"),
            }
        }
    }
}
