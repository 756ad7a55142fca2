//! A real RabbitMQ (Debian's `rabbitmq-server`) for tests: its own epmd and broker on free
//! loopback ports, temporary directories, the process group killed on drop.
//!
//! The Debian wrapper `/usr/sbin/rabbitmq-server` switches to the `rabbitmq` user (dropping the
//! test's `HOME` and directories), so this runs the script it calls,
//! `/usr/lib/rabbitmq/bin/rabbitmq-server`.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WRAPPER: &str = "/usr/sbin/rabbitmq-server";
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// A running broker; stopped (SIGKILL to its process group) when dropped.
pub struct Rabbit {
    children: Vec<Child>,
    pgid: i32,
    dir: PathBuf,
    /// The AMQP port.
    pub port: u16,
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        // SAFETY: signalling the process group this test started (epmd and the broker).
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

impl Rabbit {
    /// Starts a broker listening on 127.0.0.1:`port` whose default user is `user`/`password`
    /// (what `RABBITMQ_DEFAULT_USER` / `RABBITMQ_DEFAULT_PASS` set in the official image), in
    /// `dir`. `None` when rabbitmq-server is missing and `OBSBOX_SKIP_EXTERNAL=1`; fails the
    /// test when it is missing otherwise, or when the broker does not listen within 60 s.
    pub fn start(dir: PathBuf, port: u16, user: &str, password: &str) -> Option<Rabbit> {
        if !super::compose::require_external(WRAPPER, "rabbitmq-server") {
            return None;
        }
        assert!(std::path::Path::new(SERVER).exists(), "{SERVER} missing although {WRAPPER} is installed");
        std::fs::create_dir_all(&dir).expect("rabbit dir");
        let free = super::free_port;
        let (dist, epmd) = (free(), free());
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("default_user = {user}\ndefault_pass = {password}\nloopback_users = none\n"),
        )
        .expect("rabbitmq.conf");
        let log = std::fs::File::create(dir.join("server.log")).expect("log file");
        // Our own epmd in the foreground, leading the process group: the broker finds it on
        // ERL_EPMD_PORT instead of starting a daemon that would outlive the test.
        let epmd_child = Command::new("/usr/bin/epmd")
            .args(["-port", &epmd.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start epmd (erlang-base)");
        let pgid = epmd_child.id() as i32;
        let mut rabbit = Rabbit { children: vec![epmd_child], pgid, dir: dir.clone(), port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", epmd)).is_err() {
            assert!(Instant::now() < deadline, "epmd did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let server = Command::new(SERVER)
            .current_dir(&dir)
            .env("HOME", &dir)
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_NODENAME", format!("obsbox_compose_{port}@localhost"))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("ERL_EPMD_PORT", epmd.to_string())
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(pgid)
            .spawn()
            .expect("start rabbitmq-server");
        rabbit.children.push(server);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "rabbitmq-server did not listen within 60 s; its log: {}", rabbit.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(rabbit)
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}
