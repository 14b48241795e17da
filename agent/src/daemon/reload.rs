//! Applying a new configuration to the running agent: validated in full first (an invalid
//! file changes nothing), then each changed part applied live without detaching a probe,
//! losing an event or resetting a counter; keys fixed at load time keep their running
//! value and are reported as needing a restart.

use serde::Serialize;

use super::{print, DaemonError, Loaded, Running, Source};
use crate::config::Plan;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadResult {
    /// Every changed key is in effect (restart keys aside, which are reported).
    Applied,
    /// The new file was refused; the running configuration stays.
    Invalid,
    /// Some changed keys could not be applied; they keep their running value.
    Partial,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Invalid => "invalid",
            ReloadResult::Partial => "partial",
        }
    }
}

/// One reload, as printed (`"type":"config_reload"` in JSON).
#[derive(Clone, Debug, Serialize)]
pub struct ReloadReport {
    /// Generation of the configuration running after this reload (1 at start).
    pub generation: u64,
    pub result: ReloadResult,
    /// Keys now in effect with their new value.
    pub applied: Vec<String>,
    /// Keys whose new value waits for a restart (running value kept).
    pub needs_restart: Vec<String>,
    /// Keys that could not be applied, with why.
    pub failed: Vec<(String, String)>,
    /// Why the file was refused.
    pub error: Option<String>,
    /// Time spent reading, validating and applying, in microseconds.
    pub duration_us: u64,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config: reload {}", self.result.as_str())?;
        if let Some(e) = &self.error {
            return write!(f, " (generation {} keeps running): {e}", self.generation);
        }
        write!(
            f,
            ", generation {} in {} µs",
            self.generation, self.duration_us
        )?;
        if self.applied.is_empty() && self.needs_restart.is_empty() && self.failed.is_empty() {
            write!(f, ", nothing changed")?;
        }
        if !self.applied.is_empty() {
            write!(f, "; applied: {}", self.applied.join(", "))?;
        }
        if !self.needs_restart.is_empty() {
            write!(
                f,
                "; needs restart (running value kept): {}",
                self.needs_restart.join(", ")
            )?;
        }
        for (k, why) in &self.failed {
            write!(f, "; NOT applied {k}: {why}")?;
        }
        Ok(())
    }
}

/// Reload counters since start (`hostscope.config.reloads` by result).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ReloadStats {
    pub generation: u64,
    pub applied: u64,
    pub invalid: u64,
    pub partial: u64,
    pub last_error: Option<String>,
    /// Keys changed in the file that wait for a restart.
    pub pending_restart: Vec<String>,
}

impl Default for ReloadStats {
    fn default() -> Self {
        ReloadStats {
            generation: 1,
            applied: 0,
            invalid: 0,
            partial: 0,
            last_error: None,
            pending_restart: Vec::new(),
        }
    }
}

impl Running {
    /// Reads the sources again and applies what changed. `forced` (SIGHUP) reloads even
    /// when the file's text is unchanged. Only a failure to print is an error.
    pub async fn reload(&mut self, source: &Source, forced: bool) -> Result<(), DaemonError> {
        let started = std::time::Instant::now();
        let mut report = match source.load() {
            Err(e) => {
                self.reloads.invalid += 1;
                self.reloads.last_error = Some(e.to_string());
                ReloadReport {
                    generation: self.reloads.generation,
                    result: ReloadResult::Invalid,
                    applied: Vec::new(),
                    needs_restart: Vec::new(),
                    failed: Vec::new(),
                    error: Some(e.to_string()),
                    duration_us: 0,
                }
            }
            Ok(loaded) => {
                if !forced && loaded.text.is_some() && loaded.text == self.text {
                    return Ok(());
                }
                self.apply(loaded).await
            }
        };
        report.duration_us = started.elapsed().as_micros() as u64;
        let format = self.config.agent.output;
        print(format, "config_reload", &report)?;
        Ok(())
    }

    /// Applies a loaded configuration to the running agent.
    pub async fn apply(&mut self, loaded: Loaded) -> ReloadReport {
        let plan = Plan::new(&self.config, &loaded.config);
        let mut effective = plan.effective.clone();
        let mut failed = Vec::new();
        let old = self.config.clone();
        let changed = |prefix: &str| plan.live.iter().any(|k| k.starts_with(prefix));

        for family in self.agent.families() {
            if changed(&format!("{}.", family.name())) {
                family.reload(&old, &mut effective, &mut failed);
            }
        }
        if changed("metadata.") {
            // Keys the resolver could not take live keep their running value.
            for key in self.agent.set_metadata_options(effective.metadata.clone()) {
                failed.push((format!("metadata.{key}"), "cannot change live".to_string()));
            }
        }
        if changed("export.") || loaded.export.is_some() != self.export.is_some() {
            match self.apply_export(loaded.export.clone()).await {
                Ok(()) => self.export = loaded.export.clone(),
                Err(e) => {
                    failed.push(("export".to_string(), e));
                    effective.export = old.export.clone();
                }
            }
        }
        if changed("rca.") {
            // `rca.enabled` is a restart key; the others apply from the next failure.
            if let Some(r) = &self.rca {
                r.set_settings(&effective.rca);
            }
        }
        // agent.stats_interval is read by the run loop from the running configuration;
        // export.interval went to the exporter with the rest of its section.
        self.config = effective;
        self.text = loaded.text;
        self.reloads.generation += 1;
        self.reloads.pending_restart = plan.restart.clone();
        let result = if failed.is_empty() {
            self.reloads.applied += 1;
            ReloadResult::Applied
        } else {
            self.reloads.partial += 1;
            ReloadResult::Partial
        };
        let failed_keys: Vec<&String> = failed.iter().map(|(k, _)| k).collect();
        ReloadReport {
            generation: self.reloads.generation,
            result,
            applied: plan
                .live
                .iter()
                .filter(|k| !failed_keys.iter().any(|f| k.starts_with(f.as_str())))
                .cloned()
                .collect(),
            needs_restart: plan.restart,
            failed,
            error: None,
            duration_us: 0,
        }
    }

    /// Starts, stops or reconfigures the exporter. A reconfigured exporter keeps its queue:
    /// what was queued for the old endpoint goes to the new one.
    async fn apply_export(
        &mut self,
        new: Option<crate::export::ExportConfig>,
    ) -> Result<(), String> {
        match (self.exporter.as_ref(), new) {
            (Some(e), Some(cfg)) => e.reconfigure(cfg).await.map_err(|e| e.to_string()),
            (None, Some(cfg)) => {
                let sink = self.agent.sink_context(self.status.clone());
                let exporter = crate::export::Exporter::start(cfg, sink);
                self.exporter = Some(exporter.map_err(|e| e.to_string())?);
                Ok(())
            }
            (Some(_), None) => {
                // Export turned off: what is queued gets the flush deadline, as at a stop.
                if let Some(e) = self.exporter.take() {
                    let flush = self.config.export.flush_timeout;
                    tokio::spawn(async move {
                        let s = e.stop(flush).await;
                        eprintln!("config: export stopped: {s}");
                    });
                }
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }
}
