//! `/healthz` and `/readyz`: what the kubelet's probes ask, answered from the status
//! document (which the run loop builds on request, so getting one proves the loop turns).

use crate::{loader::FamilyHealth, status::Status};

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

/// Ready: the run loop answers, every probe family the configuration left on has at least
/// one program attached, and records flow: at least one was decoded from a ring or made
/// from the syscall aggregation maps (a node always makes syscalls, so this proves the
/// kernel → agent path within one interval; until then the body says it is waiting). A
/// family with no program attached makes the agent unready; one whose programs are all
/// off by configuration is named "off" and does not count. A family with a degraded
/// program, or a program not attached (or turned off) for another reason than an
/// alternative hook having attached instead ("not needed: …"), is degraded: named with
/// each reason, but ready (a node whose kernel lacks one hook still gives the rest; an
/// unready pod would only block the rollout). The body has one line per family.
pub fn readyz(status: Option<&Status>) -> Verdict {
    let Some(s) = status else {
        return Verdict {
            ok: false,
            body: "not ready: the run loop did not answer a status request\n".to_string(),
        };
    };
    let families = FamilyHealth::of(&s.probes);
    let mut ok = families.values().any(|f| !f.is_off());
    let mut lines = Vec::new();
    for (family, f) in &families {
        if f.is_off() {
            lines.push(format!("{family}: off: {}", f.off_reasons().join("; ")));
        } else if f.up == 0 {
            ok = false;
            let why: Vec<&str> = f.down.iter().chain(&f.off).map(String::as_str).collect();
            lines.push(format!("{family}: down: {}", why.join("; ")));
        } else if !f.degraded.is_empty() || !f.down.is_empty() || !f.off.is_empty() {
            let why: Vec<&str> = f
                .degraded
                .iter()
                .chain(&f.down)
                .chain(&f.off)
                .map(String::as_str)
                .collect();
            lines.push(format!(
                "{family}: degraded ({} programs attached): {}",
                f.up,
                why.join("; ")
            ));
        } else {
            lines.push(format!("{family}: ok ({} programs attached)", f.up));
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
        (false, false) if families.values().all(FamilyHealth::is_off) => {
            "not ready: every probe family is off by configuration".to_string()
        }
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
    use crate::loader::{AttachState, ProbeStatus};

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
    fn a_family_off_by_configuration_does_not_make_the_agent_unready() {
        let off = |p| probe("sys", p, AttachState::Off("syscall hooks off".into()));
        let mut s = status(vec![
            probe("tcp", "tcp_state_change", AttachState::Attached),
            off("sys_enter_btf"),
            off("sys_exit_btf"),
        ]);
        s.agent.records_decoded = 1;
        let v = readyz(Some(&s));
        assert!(v.ok, "{}", v.body);
        assert!(
            v.body.contains("sys: off: syscall hooks off\n"),
            "{}",
            v.body
        );
        // Off beside a failure is no excuse: the family is down.
        s.probes.push(probe(
            "sys",
            "security",
            AttachState::NotAttached("EPERM".into()),
        ));
        let v = readyz(Some(&s));
        assert!(!v.ok, "{}", v.body);
        assert!(
            v.body
                .contains("sys: down: security: EPERM; sys_enter_btf: syscall hooks off"),
            "{}",
            v.body
        );
        // Every family off: nothing to be ready with.
        s.probes.retain(|p| matches!(p.state, AttachState::Off(_)));
        let v = readyz(Some(&s));
        assert!(!v.ok);
        assert!(
            v.body.starts_with("not ready: every probe family is off"),
            "{}",
            v.body
        );
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
