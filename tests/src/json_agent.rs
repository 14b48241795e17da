//! A `hostscope run --output json` child as the suites drive it: its stdout parsed line by
//! line on a thread, its stderr kept for failure messages.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

pub struct JsonAgent {
    pub child: Child,
    pub lines: mpsc::Receiver<Value>,
    /// Every line received so far, in order.
    pub seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
}

impl JsonAgent {
    /// Spawns `cmd` (a `run --output json --stats-interval 1 …`) and returns once its
    /// first counters line is out: probes attached, run loop turning.
    pub fn spawn(mut cmd: Command, ready_within: Duration) -> JsonAgent {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hostscope run");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut a = JsonAgent {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        };
        a.wait(ready_within, "the first agent_stats line", |v| {
            v["type"] == "agent_stats"
        });
        a
    }

    /// Waits for a line matching `pred` (among those not yet returned) and returns it;
    /// panics naming `what`, with the agent's stderr, when none comes in time.
    pub fn wait(&mut self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "{what}: no matching line within {timeout:?}; stderr:\n{}",
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGTERM, then every line up to the exit (which must be a success).
    pub fn stop(mut self) -> Vec<Value> {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "agent exited with {status}");
        while let Ok(v) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(v);
        }
        self.seen
    }
}
