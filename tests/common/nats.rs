//! A real nats-server for the relay tests: started on a free loopback port with JetStream and a temporary store,
//! stopped and restarted on the same port and store, killed on drop. And reading a stream back.

use std::net::{TcpListener, TcpStream};
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
}

impl NatsServer {
    /// Starts a server with JetStream, its store under `store`, on a free loopback port.
    pub fn start(store: &Path) -> NatsServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = NatsServer { child: None, port, store: store.to_path_buf() };
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

    /// Starts the server (again) on the same port and store, and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        let binary = nats_server_binary();
        let log = std::fs::File::create(self.store.join(format!("nats-{}.log", self.port))).unwrap();
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {} within {START_TIMEOUT:?}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
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
