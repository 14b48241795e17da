//! The TLS tracker as a task: fed by the wire and OpenSSL ring consumers and by the TCP
//! records on the agent's channel; publishes handshake records, remembers failures in
//! the pinned `TLS_FAILURES` map and lets the probe forget finished flows.

use std::{
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use aya::maps::{Array, HashMap, MapData};
use hostscope_common::tls::{TlsFailureSlot, TlsFlow, TLS_FAILURES_SLOTS};
use tokio::sync::{broadcast, mpsc, watch};

use super::tracker::{Output, Tracker, TrackerStats, GRACE_NS};
use crate::{
    agent::SharedRecord,
    events::{
        monotonic_ns,
        tls::{LibEvent, TlsRecord, WireEvent},
        Clock, Record,
    },
    stats::Counters,
};

pub enum TlsInput {
    Wire(WireEvent),
    Lib(LibEvent),
}

/// Userspace handles on the TLS maps the tracker writes.
pub struct TlsMaps {
    pub flows: Option<HashMap<MapData, u64, TlsFlow>>,
    pub failures: Option<Array<MapData, TlsFailureSlot>>,
}

pub struct TrackerTask {
    pub input: mpsc::Receiver<TlsInput>,
    pub tcp: broadcast::Receiver<SharedRecord>,
    pub out: broadcast::Sender<SharedRecord>,
    pub maps: TlsMaps,
    pub clock: Clock,
    pub counters: Arc<Counters>,
    pub stats: Arc<Mutex<TrackerStats>>,
    pub shutdown: watch::Receiver<bool>,
}

/// Queued records handled per turn at most, so the other inputs are not starved.
const TCP_BATCH: usize = 256;

fn on_record(tracker: &mut Tracker, record: &Record, now: u64, out: &mut Output) {
    if let Record::Tcp(t) = record {
        tracker.on_tcp(t, now, out);
    }
}

impl TrackerTask {
    pub async fn run(mut self) {
        let mut tracker = Tracker::new(self.clock);
        let mut next_slot: u32 = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            let mut out = Output::default();
            tokio::select! {
                input = self.input.recv() => match input {
                    Some(TlsInput::Wire(ev)) => tracker.on_wire(ev, &mut out),
                    Some(TlsInput::Lib(ev)) => tracker.on_lib(ev, monotonic_ns(), &mut out),
                    None => break,
                },
                rec = self.tcp.recv() => match rec {
                    Ok(r) => {
                        let now = monotonic_ns();
                        on_record(&mut tracker, &r, now, &mut out);
                        // What is already queued is handled in the same turn: one clock
                        // read, one publish and one stats copy per batch, not per record.
                        for _ in 0..TCP_BATCH {
                            match self.tcp.try_recv() {
                                Ok(r) => on_record(&mut tracker, &r, now, &mut out),
                                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                    self.counters.records_lagged.fetch_add(n, Ordering::Relaxed);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.counters.records_lagged.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tick.tick() => tracker.tick(monotonic_ns(), &mut out),
                changed = self.shutdown.changed() => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        // Drain what the consumers already queued, then let pending
                        // failures out without waiting for their grace period.
                        while let Ok(input) = self.input.try_recv() {
                            match input {
                                TlsInput::Wire(ev) => tracker.on_wire(ev, &mut out),
                                TlsInput::Lib(ev) => tracker.on_lib(ev, monotonic_ns(), &mut out),
                            }
                        }
                        tracker.tick(monotonic_ns() + GRACE_NS, &mut out);
                        self.publish(out, &mut next_slot);
                        break;
                    }
                }
            }
            self.publish(out, &mut next_slot);
            if let Ok(mut s) = self.stats.lock() {
                *s = tracker.stats.clone();
            }
        }
        if let Ok(mut s) = self.stats.lock() {
            *s = tracker.stats.clone();
        }
    }

    fn publish(&mut self, out: Output, next_slot: &mut u32) {
        for record in out.records {
            self.counters
                .records_decoded
                .fetch_add(1, Ordering::Relaxed);
            let _ = self.out.send(Arc::new(record));
        }
        if let Some(failures) = self.maps.failures.as_mut() {
            for rec in &out.failures {
                let slot = failure_slot(rec);
                if failures
                    .set(*next_slot % TLS_FAILURES_SLOTS, slot, 0)
                    .is_ok()
                {
                    *next_slot = next_slot.wrapping_add(1);
                }
            }
        }
        if let Some(flows) = self.maps.flows.as_mut() {
            for cookie in out.forget {
                // Already gone (the probe forgets finished flows itself) is fine.
                let _ = flows.remove(&cookie);
            }
        }
    }
}

fn copy_str(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len());
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

pub fn failure_slot(rec: &TlsRecord) -> TlsFailureSlot {
    let mut slot = TlsFailureSlot {
        unix_ns: rec.timestamp_unix_ns,
        cert_not_after_unix: rec.cert_not_after_unix.unwrap_or(0),
        pid: rec.pid.unwrap_or(0),
        raw_code: 0,
        remote: [0; 16],
        remote_port: 0,
        family: 0,
        version: 0,
        _pad: 0,
        reason: [0; 32],
        sni: [0; 64],
        comm: [0; 16],
    };
    if let Some(f) = &rec.failure {
        copy_str(&mut slot.reason, f.reason.as_str());
        slot.raw_code = match (f.alert, f.verify_error) {
            (Some(a), _) => a as u32,
            (None, Some(v)) => 256 + v,
            _ => 0,
        };
    }
    if let Some(remote) = rec.remote {
        slot.remote_port = remote.port();
        match remote.ip() {
            std::net::IpAddr::V4(v4) => {
                slot.family = hostscope_common::tcp::AF_INET;
                slot.remote[..4].copy_from_slice(&v4.octets());
            }
            std::net::IpAddr::V6(v6) => {
                slot.family = hostscope_common::tcp::AF_INET6;
                slot.remote = v6.octets();
            }
        }
    }
    slot.version = match rec.version.as_deref() {
        Some("TLSv1.3") => 0x0304,
        Some("TLSv1.2") => 0x0303,
        Some("TLSv1.1") => 0x0302,
        Some("TLSv1.0") => 0x0301,
        _ => 0,
    };
    if let Some(sni) = &rec.server_name {
        copy_str(&mut slot.sni, sni);
    }
    if let Some(comm) = &rec.comm {
        copy_str(&mut slot.comm, comm);
    }
    slot
}
