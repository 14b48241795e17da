//! What the sinks make of the syscalls family's records: the interval aggregation's
//! metrics, logs of alerts, slow calls and watched-path access, RCA causes of error
//! bursts, the API filter's failures.

use opentelemetry_proto::tonic::logs::v1::SeverityNumber;

use crate::{
    api::filter::Filtered,
    events::{
        syscalls::{
            row_subject, Access, AlertKind, SecurityRecord, SlowSyscallRecord, SyscallAlert,
            SyscallsRecord,
        },
        view::{list_bytes, opt_bytes, About},
        RecordView,
    },
    export::{
        logs::{LogEntry, Logged},
        metrics::{int, text, Key, Measure, Meter, MetricDef},
        resource::{int_value, kv, str_value},
        spans::Traced,
    },
    metadata::Subject,
    rca::classify::{Cause, Classified, Classify, Recovery, Target},
};

pub static CALLS: MetricDef = MetricDef::counter(
    "syscall.calls",
    "{call}",
    "System calls, per syscall and process name.",
);
pub static ERRORS: MetricDef = MetricDef::counter(
    "syscall.errors",
    "{call}",
    "Failed system calls by errno (error.type).",
);
pub static DURATION: MetricDef = MetricDef::histogram(
    "syscall.duration",
    "s",
    &[0.000001, 0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0],
    "System call latency (from the kernel's log2 histogram: each power-of-two bucket is placed by its midpoint).",
);

/// The family's metrics (`family::Descriptor::metrics`).
pub static METRICS: &[&MetricDef] = &[&CALLS, &ERRORS, &DURATION];

/// Nothing tells that an error burst is over but quiet.
const QUIET: Recovery = Recovery::QUIET_ONLY;

pub static FD_LIMIT: Cause = Cause::new("fd_limit", "syscalls", QUIET);
pub static SYSTEM_FD_LIMIT: Cause = Cause::new("system_fd_limit", "syscalls", QUIET);
pub static NO_SPACE: Cause = Cause::new("no_space", "syscalls", QUIET);
pub static PERMISSION_DENIED: Cause = Cause::new("permission_denied", "syscalls", QUIET);
pub static OUT_OF_MEMORY: Cause = Cause::new("out_of_memory", "syscalls", QUIET);
pub static SYSCALL_CONNECTION_REFUSED: Cause =
    Cause::new("syscall_connection_refused", "syscalls", QUIET);
pub static SYSCALL_ERRORS: Cause = Cause::new("syscall_errors", "syscalls", QUIET);

/// The family's causes, in the order docs/rca.md lists them.
pub static CAUSES: &[&Cause] = &[
    &FD_LIMIT,
    &SYSTEM_FD_LIMIT,
    &NO_SPACE,
    &PERMISSION_DENIED,
    &OUT_OF_MEMORY,
    &SYSCALL_CONNECTION_REFUSED,
    &SYSCALL_ERRORS,
];

// ---- interval aggregation -------------------------------------------------------------

impl RecordView for SyscallsRecord {
    /// Rows name many processes; each is resolved on its own (`row_subject`).
    fn about(&self) -> About {
        About {
            kind: "syscalls",
            time_unix_ns: self.ts_unix_ns,
            ..Default::default()
        }
    }

    fn row_subjects(&self) -> Vec<Subject> {
        self.processes
            .iter()
            .map(|p| row_subject(self.key_by, p.id))
            .collect()
    }

    fn heap_bytes(&self) -> usize {
        list_bytes(&self.processes, |p| {
            p.comm.capacity()
                + list_bytes(&p.syscalls, |x| x.syscall.capacity())
                + list_bytes(&p.errnos, |x| {
                    x.syscall.capacity() + x.errno_name.capacity()
                })
        })
    }
}

impl Measure for SyscallsRecord {
    fn measure(&self, meter: &mut Meter<'_>) {
        let by_pid = self.key_by == "pid";
        let pids = meter.options().pids;
        for p in &self.processes {
            let mut base: Key = vec![text("process.executable.name", p.comm.as_str())];
            if by_pid && pids {
                base.push(int("process.pid", p.id as i64));
            }
            if !by_pid {
                base.push(int("hostscope.cgroup.id", p.id as i64));
            }
            for row in &p.syscalls {
                let mut k = base.clone();
                k.push(text("syscall.name", row.syscall.as_str()));
                meter.add(&CALLS, k.clone(), row.count as i64);
                if row.timed > 0 {
                    meter.merge_log2(&DURATION, k, &row.hist, row.total_ns, row.max_ns);
                }
            }
            for e in &p.errnos {
                let mut k = base.clone();
                k.push(text("syscall.name", e.syscall.as_str()));
                k.push(text("error.type", e.errno_name.as_str()));
                meter.add(&ERRORS, k, e.count as i64);
            }
        }
    }
}

impl Logged for SyscallsRecord {}
impl Traced for SyscallsRecord {}
impl Classify for SyscallsRecord {}
impl Filtered for SyscallsRecord {}

// ---- alerts ---------------------------------------------------------------------------

impl RecordView for SyscallAlert {
    fn about(&self) -> About {
        About {
            kind: "syscall_alert",
            time_unix_ns: self.ts_unix_ns,
            subject: row_subject(self.key_by, self.id),
        }
    }

    fn heap_bytes(&self) -> usize {
        self.comm.capacity() + self.syscall.capacity() + opt_bytes(&self.errno_name)
    }
}

/// Alerts are logs; the interval's counts are measured from its `syscalls` record.
impl Measure for SyscallAlert {}
impl Traced for SyscallAlert {}

impl Logged for SyscallAlert {
    /// `hostscope.syscall.alert`; an error burst is one of the failures incidents fold.
    fn log_entry(&self) -> Option<LogEntry> {
        let r = self;
        let kind = match r.kind {
            AlertKind::ErrorBurst => "error_burst",
            AlertKind::Slow => "slow",
        };
        let mut a = vec![
            kv("hostscope.alert", str_value(kind)),
            kv("syscall.name", str_value(&r.syscall)),
            kv("process.executable.name", str_value(&r.comm)),
            kv("hostscope.count", int_value(r.count as i64)),
        ];
        a.push(if r.key_by == "pid" {
            kv("process.pid", int_value(r.id as i64))
        } else {
            kv("hostscope.cgroup.id", int_value(r.id as i64))
        });
        if let Some(e) = &r.errno_name {
            a.push(kv("error.type", str_value(e)));
        }
        let body = format!(
            "{} {kind}: {} {} at {:.1}/s",
            r.comm,
            r.syscall,
            r.errno_name.as_deref().unwrap_or(""),
            r.rate_per_s
        );
        Some(LogEntry {
            time_unix_ns: r.ts_unix_ns,
            severity: SeverityNumber::Warn,
            event: "hostscope.syscall.alert",
            body,
            attributes: a,
        })
    }

    fn failure_log(&self) -> bool {
        self.kind == AlertKind::ErrorBurst
    }
}

impl Classify for SyscallAlert {
    fn classify(
        &self,
        _cert: Option<&crate::rca::classify::KnownCertificate>,
    ) -> Option<Classified> {
        if self.kind != AlertKind::ErrorBurst {
            return None;
        }
        classify_burst(self)
    }
}

impl Filtered for SyscallAlert {
    fn is_failure(&self) -> bool {
        self.kind == AlertKind::ErrorBurst
    }

    fn reasons(&self) -> Vec<&str> {
        self.errno_name.as_deref().into_iter().collect()
    }
}

fn classify_burst(r: &SyscallAlert) -> Option<Classified> {
    let errno = r.errno? as i32;
    let name = r.errno_name.as_deref().unwrap_or("an error");
    let call = &r.syscall;
    let (cause, meaning) = match errno {
        libc::EMFILE => (
            &FD_LIMIT,
            "the process hit its file-descriptor limit (RLIMIT_NOFILE)".to_string(),
        ),
        libc::ENFILE => (
            &SYSTEM_FD_LIMIT,
            "the system-wide open-file table is full (fs.file-max)".to_string(),
        ),
        libc::ENOSPC => (
            &NO_SPACE,
            "no space left on the device (blocks or inodes)".to_string(),
        ),
        libc::EACCES | libc::EPERM => (
            &PERMISSION_DENIED,
            "permission denied: file modes, capabilities or a security module refuse it"
                .to_string(),
        ),
        libc::ENOMEM => (
            &OUT_OF_MEMORY,
            "the kernel could not allocate memory for the call".to_string(),
        ),
        libc::ECONNREFUSED => (
            &SYSCALL_CONNECTION_REFUSED,
            "nothing listens at the address connected to".to_string(),
        ),
        _ => (&SYSCALL_ERRORS, errno_meaning(errno)),
    };
    Some(Classified {
        cause,
        sentence: format!("{call} failed with {name} — {meaning}"),
        target: Target::Syscall(call.clone()),
        weight: r.count.max(1),
        conn_id: None,
        comm: Some(r.comm.clone()),
        seen_unix_ns: r.ts_unix_ns,
        // count / rate is the interval the burst was measured over.
        over_ns: if r.rate_per_s > 0.0 {
            (r.count as f64 / r.rate_per_s * 1e9) as u64
        } else {
            0
        },
    })
}

/// The C library's description of an errno, without Rust's "(os error N)" suffix.
fn errno_meaning(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error") {
        Some(i) => text[..i].to_lowercase(),
        None => text,
    }
}

// ---- slow calls -----------------------------------------------------------------------

impl RecordView for SlowSyscallRecord {
    fn about(&self) -> About {
        About {
            kind: "syscall_slow",
            time_unix_ns: self.ts_unix_ns,
            subject: Subject {
                pid: Some(self.pid),
                cgroup_id: Some(self.cgroup_id),
            },
        }
    }

    fn heap_bytes(&self) -> usize {
        self.comm.capacity() + self.syscall.capacity()
    }
}

impl Measure for SlowSyscallRecord {}
impl Traced for SlowSyscallRecord {}
impl Classify for SlowSyscallRecord {}
impl Filtered for SlowSyscallRecord {}

impl Logged for SlowSyscallRecord {
    /// `hostscope.syscall.slow`.
    fn log_entry(&self) -> Option<LogEntry> {
        let r = self;
        let a = vec![
            kv("syscall.name", str_value(&r.syscall)),
            kv("process.pid", int_value(r.pid as i64)),
            kv("process.executable.name", str_value(&r.comm)),
            kv("hostscope.latency_ns", int_value(r.latency_ns as i64)),
            kv("hostscope.result", int_value(r.result)),
        ];
        let body = format!(
            "{}[{}] {} took {:.3} ms",
            r.comm,
            r.pid,
            r.syscall,
            r.latency_ns as f64 / 1e6
        );
        Some(LogEntry {
            time_unix_ns: r.ts_unix_ns,
            severity: SeverityNumber::Info,
            event: "hostscope.syscall.slow",
            body,
            attributes: a,
        })
    }
}

// ---- watched paths --------------------------------------------------------------------

impl RecordView for SecurityRecord {
    fn about(&self) -> About {
        About {
            kind: "security",
            time_unix_ns: self.ts_unix_ns,
            subject: Subject {
                pid: Some(self.pid),
                cgroup_id: Some(self.cgroup_id),
            },
        }
    }

    fn heap_bytes(&self) -> usize {
        self.comm.capacity()
            + self.syscall.capacity()
            + self.path.capacity()
            + opt_bytes(&self.errno_name)
    }
}

impl Measure for SecurityRecord {}
impl Traced for SecurityRecord {}
impl Classify for SecurityRecord {}

impl Logged for SecurityRecord {
    /// `hostscope.security.file_access`: the path, never the contents.
    fn log_entry(&self) -> Option<LogEntry> {
        let r = self;
        let access = match r.access {
            Access::Open => "open",
            Access::Exec => "exec",
        };
        let mut a = vec![
            kv("file.path", str_value(&r.path)),
            kv("hostscope.access", str_value(access)),
            kv("syscall.name", str_value(&r.syscall)),
            kv("process.pid", int_value(r.pid as i64)),
            kv("thread.id", int_value(r.tid as i64)),
            kv("process.executable.name", str_value(&r.comm)),
            kv("user.id", str_value(r.uid.to_string())),
            kv("hostscope.gid", int_value(r.gid as i64)),
            kv("hostscope.cgroup.id", int_value(r.cgroup_id as i64)),
            kv("hostscope.open.flags", int_value(r.flags as i64)),
            kv("hostscope.result", int_value(r.result)),
        ];
        if let Some(pp) = r.ppid {
            a.push(kv("process.parent_pid", int_value(pp as i64)));
        }
        if r.truncated {
            a.push(kv("hostscope.path.truncated", str_value("true")));
        }
        if let Some(e) = &r.errno_name {
            a.push(kv("error.type", str_value(e)));
        }
        let body = format!(
            "{}[{}] {access} {} ({})",
            r.comm,
            r.pid,
            r.path,
            r.errno_name.as_deref().unwrap_or("ok")
        );
        Some(LogEntry {
            time_unix_ns: r.ts_unix_ns,
            severity: SeverityNumber::Warn,
            event: "hostscope.security.file_access",
            body,
            attributes: a,
        })
    }
}

impl Filtered for SecurityRecord {
    /// A refused access is not a failure of the node's services, but its errno is a
    /// reason to filter on.
    fn reasons(&self) -> Vec<&str> {
        self.errno_name.as_deref().into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        events::{syscalls::sample_alert, Record},
        rca::classify::classify,
    };

    #[test]
    fn error_bursts_by_errno() {
        let c = classify(
            &Record::SyscallAlert(sample_alert(Some(libc::EMFILE))),
            None,
        )
        .unwrap();
        assert_eq!(c.cause.code, "fd_limit");
        assert_eq!(c.weight, 250);
        assert!(c
            .sentence
            .contains("openat failed with EMFILE — the process hit its file-descriptor limit"));
        let c = classify(
            &Record::SyscallAlert(sample_alert(Some(libc::ENOENT))),
            None,
        )
        .unwrap();
        assert_eq!(c.cause.code, "syscall_errors");
        assert!(
            c.sentence.ends_with("no such file or directory"),
            "{}",
            c.sentence
        );
    }
}
