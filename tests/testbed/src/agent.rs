//! A `petrel-agent` process for tests, stopped by PID on drop; its log is kept for failures.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Agent {
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent inside the network namespace at `netns` with `args`.
    pub fn start(netns: &Path, args: &[String]) -> Agent {
        Self::start_wrapped(netns, &[], args)
    }

    /// As `start`, run through `wrapper` (a command that execs the rest of its arguments, such as
    /// `setpriv ... --`), so the agent keeps the PID.
    pub fn start_wrapped(netns: &Path, wrapper: &[&str], args: &[String]) -> Agent {
        let bin = crate::workspace_bin("petrel-agent", "PETREL_AGENT_BIN");
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("agent.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg("--")
            .args(wrapper)
            .arg(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .spawn()
            .expect("start petrel-agent");
        Agent {
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    /// The agent's PID (nsenter and any wrapper exec it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the process to end.
    pub fn stop(&mut self, signal: i32) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // nsenter execs the agent, so the child's PID is the agent's.
        crate::stop_child(&mut child, signal, Duration::from_secs(10));
    }

    /// Waits up to `secs` seconds for the agent to exit by itself and returns its exit code
    /// (None: killed by a signal). Panics if it is still running then (drop stops it).
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let child = self.child.as_mut().expect("the agent was started");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = child.try_wait().expect("wait for petrel-agent") {
                self.child = None;
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "petrel-agent still running after {secs} s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop(libc::SIGTERM);
        if std::thread::panicking() {
            eprintln!("--- petrel-agent log ---\n{}", self.log());
        }
    }
}

/// Polls `cond` every 100 ms for up to `secs` seconds.
pub fn eventually(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
