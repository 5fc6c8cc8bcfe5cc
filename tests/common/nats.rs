//! A real nats-server for the relay tests: started on a free loopback port with JetStream and a temporary store,
//! stopped and restarted on the same port and store, killed on drop. And reading a stream back.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use walq::relay::Relayed;

/// How long a started server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A nats-server child process.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    /// How many times the server was started: each start logs to a file of its own.
    starts: u32,
}

impl NatsServer {
    /// Starts a server with JetStream, its store under `store`, on a port the server picks itself (`-p -1`) and
    /// reports in its log: a port picked here and released before the server binds it can be taken by a server
    /// another test starts at the same moment, and the readiness probe would then find the wrong server.
    pub fn start(store: &Path) -> NatsServer {
        let mut server = NatsServer { child: None, port: 0, store: store.to_path_buf(), starts: 0 };
        server.restart();
        server
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port, fixed for the server's life across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A free port no server listens on (for "unreachable server" tests).
    pub fn unused_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// Stops the server cleanly (SIGTERM: JetStream flushes its store) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
            assert!(status.success(), "kill -TERM nats-server");
            child.wait().unwrap();
        }
    }

    /// Starts the server (again) on the same port and store, and waits until its log says it is ready (JetStream
    /// is up then, not only the listener). A server that exits first fails the test with its log.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        self.starts += 1;
        let binary = nats_server_binary();
        let log_path = self.store.join(format!("nats-{}.log", self.starts));
        let log = std::fs::File::create(&log_path).unwrap();
        let port = if self.port == 0 { "-1".to_string() } else { self.port.to_string() };
        let mut child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(status) = child.try_wait().unwrap() {
                panic!("nats-server exited ({status}) before it was ready:\n{text}");
            }
            if text.contains("Server is ready") {
                self.port = listening_port(&text).unwrap_or_else(|| panic!("no client port in the log:\n{text}"));
                break;
            }
            assert!(Instant::now() < deadline, "nats-server not ready within {START_TIMEOUT:?}:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }
}

/// The client port a nats-server log reports: "Listening for client connections on 127.0.0.1:PORT".
fn listening_port(log: &str) -> Option<u16> {
    let line = log.lines().rev().find(|line| line.contains("Listening for client connections on"))?;
    line.rsplit(':').next()?.trim().parse().ok()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The nats-server binary: from PATH, or where Debian installs it. The tests need a real server; .ci/run installs
/// it (`apt-get install nats-server`).
fn nats_server_binary() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("nats-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nats-server"), PathBuf::from("/usr/bin/nats-server")])
        .find(|path| path.is_file())
        .expect("nats-server not found: install it (apt-get install nats-server); .ci/run does")
}

/// A stored message of a stream: its sequence, subject, and the record it carries.
#[derive(Debug)]
pub struct StreamMessage {
    /// The stream sequence.
    pub sequence: u64,
    /// The subject it was published to.
    pub subject: String,
    /// The record, read back with `walq::relay::record_from_message`.
    pub relayed: Relayed,
}

/// Every message of `stream`, in stream order.
pub fn read_stream(url: &str, stream: &str) -> Vec<StreamMessage> {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let context = async_nats::jetstream::new(client);
        let mut stream = context.get_stream(stream).await.unwrap();
        let count = stream.info().await.unwrap().state.messages;
        let mut out = Vec::with_capacity(count as usize);
        if count == 0 {
            return out;
        }
        let consumer =
            stream.create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default()).await.unwrap();
        let mut messages = consumer.messages().await.unwrap();
        while (out.len() as u64) < count {
            let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
                .await
                .expect("stream read stalled")
                .expect("stream ended early")
                .unwrap();
            let sequence = message.info().unwrap().stream_sequence;
            let headers = message.headers.clone().unwrap_or_default();
            let relayed = walq::relay::record_from_message(&headers, &message.payload).unwrap();
            out.push(StreamMessage { sequence, subject: message.subject.to_string(), relayed });
        }
        out
    })
}

/// A small runtime for test-side NATS calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}
