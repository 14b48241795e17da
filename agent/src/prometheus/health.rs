//! `/healthz` and `/readyz`: what the kubelet's probes ask, answered from the status
//! document (which the run loop builds on request, so getting one proves the loop turns).

use std::collections::BTreeMap;

use crate::{loader::AttachState, status::Status};

/// An HTTP status and a body saying why.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub body: String,
}

/// Live: the run loop answered a status request within the bound (the same loop takes
/// signals and reloads, and the status it builds reads the agent's counters), and every
/// ring reader is still running (one that ended stopped its family's records for good).
pub fn healthz(
    status: Option<&Status>,
    waited: std::time::Duration,
    bound: std::time::Duration,
) -> Verdict {
    match status {
        Some(s) if s.consumers.ended > 0 => Verdict {
            ok: false,
            body: format!(
                "unhealthy: {} of {} ring readers have ended (their families' records stopped; the agent's log says why)\n",
                s.consumers.ended, s.consumers.tasks
            ),
        },
        Some(s) => Verdict {
            ok: true,
            body: format!(
                "ok: run loop answered in {} ms, {} ring readers running, {} records decoded, up {:.0} s\n",
                waited.as_millis(),
                s.consumers.tasks,
                s.agent.records_decoded,
                s.uptime_s
            ),
        },
        None => Verdict {
            ok: false,
            body: format!(
                "unhealthy: the run loop did not answer a status request within {} ms (stopping or stuck)\n",
                bound.as_millis()
            ),
        },
    }
}

/// Ready: the run loop answers, every probe family has at least one program attached, and
/// records flow: at least one was decoded from a ring or made from the syscall
/// aggregation maps (a node always makes syscalls, so this proves the kernel → agent path
/// within one interval; until then the body says it is waiting). A family with no program attached makes the agent unready. A family with a degraded
/// program, or a program not attached for another reason than an alternative hook having
/// attached instead ("not needed: …"), is degraded: named with each reason, but ready (a
/// node whose kernel lacks one hook still gives the rest; an unready pod would only block
/// the rollout). The body has one line per family.
pub fn readyz(status: Option<&Status>) -> Verdict {
    let Some(s) = status else {
        return Verdict {
            ok: false,
            body: "not ready: the run loop did not answer a status request\n".to_string(),
        };
    };
    // family -> (attached programs, degraded reasons, not-attached reasons)
    let mut families: BTreeMap<&str, (usize, Vec<String>, Vec<String>)> = BTreeMap::new();
    for p in &s.probes {
        let f = families.entry(p.family).or_default();
        match &p.state {
            AttachState::Attached => f.0 += 1,
            AttachState::Degraded(why) => {
                f.0 += 1;
                f.1.push(format!("{}: {why}", p.program));
            }
            AttachState::NotAttached(why) if why.starts_with("not needed") => {}
            AttachState::NotAttached(why) => f.2.push(format!("{}: {why}", p.program)),
        }
    }
    let mut ok = !families.is_empty();
    let mut lines = Vec::new();
    for (family, (up, degraded, down)) in &families {
        if *up == 0 {
            ok = false;
            lines.push(format!("{family}: down: {}", down.join("; ")));
        } else if !degraded.is_empty() || !down.is_empty() {
            let why: Vec<&str> = degraded.iter().chain(down).map(String::as_str).collect();
            lines.push(format!(
                "{family}: degraded ({up} programs attached): {}",
                why.join("; ")
            ));
        } else {
            lines.push(format!("{family}: ok ({up} programs attached)"));
        }
    }
    let made = s.agent.records_decoded + s.agent.records_aggregated;
    let flowing = made > 0;
    let head = match (ok, families.is_empty()) {
        (true, _) if !flowing => {
            ok = false;
            format!(
                "not ready: probes attached, no record made yet (up {:.0} s)",
                s.uptime_s
            )
        }
        (true, _) => format!("ready: {made} records made"),
        (false, true) => "not ready: no probe loaded".to_string(),
        (false, false) => "not ready: a probe family has no program attached".to_string(),
    };
    Verdict {
        ok,
        body: format!("{head}\n{}\n", lines.join("\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::ProbeStatus;

    fn status(probes: Vec<ProbeStatus>) -> Status {
        Status {
            version: "0",
            kernel: String::new(),
            pid: 1,
            uptime_s: 0.0,
            bpf_stats_enabled: false,
            probes,
            maps: vec![],
            consumers: Default::default(),
            agent: Default::default(),
            metadata: Default::default(),
            export: None,
            sinks: Default::default(),
        }
    }

    fn probe(family: &'static str, program: &'static str, state: AttachState) -> ProbeStatus {
        ProbeStatus {
            family,
            program,
            hook: String::new(),
            state,
        }
    }

    #[test]
    fn a_family_with_one_hook_of_two_attached_is_ready() {
        let mut s = status(vec![
            probe("sys", "sys_exit_btf", AttachState::Attached),
            probe(
                "sys",
                "sys_exit",
                AttachState::NotAttached("not needed".into()),
            ),
            probe(
                "tls",
                "ssl",
                AttachState::Degraded("some symbols missing".into()),
            ),
        ]);
        // Attached, but nothing decoded yet: waiting for records to flow.
        let v = readyz(Some(&s));
        assert!(!v.ok, "{}", v.body);
        assert!(
            v.body
                .starts_with("not ready: probes attached, no record made yet"),
            "{}",
            v.body
        );
        s.agent.records_decoded = 1;
        let v = readyz(Some(&s));
        assert!(v.ok, "{}", v.body);
        assert!(
            v.body
                .contains("tls: degraded (1 programs attached): ssl: some symbols missing"),
            "{}",
            v.body
        );
        assert!(
            v.body.contains("sys: ok (1 programs attached)"),
            "{}",
            v.body
        );
    }

    #[test]
    fn a_family_with_nothing_attached_is_named() {
        let s = status(vec![
            probe("tcp", "tcp_state_change", AttachState::Attached),
            probe(
                "sys",
                "sys_exit",
                AttachState::NotAttached("syscall hooks off".into()),
            ),
        ]);
        let v = readyz(Some(&s));
        assert!(!v.ok);
        assert!(
            v.body.contains("sys: down: sys_exit: syscall hooks off"),
            "{}",
            v.body
        );
        assert!(!readyz(None).ok);
        assert!(!healthz(None, Default::default(), Default::default()).ok);
    }

    #[test]
    fn an_ended_ring_reader_is_unhealthy() {
        let mut s = status(vec![]);
        s.consumers = crate::status::Consumers { tasks: 4, ended: 0 };
        assert!(healthz(Some(&s), Default::default(), Default::default()).ok);
        s.consumers.ended = 1;
        let v = healthz(Some(&s), Default::default(), Default::default());
        assert!(!v.ok);
        assert!(
            v.body.contains("1 of 4 ring readers have ended"),
            "{}",
            v.body
        );
    }
}
