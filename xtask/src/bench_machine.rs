//! The machine a figure came from: CPU model, cores, kernel and the speculative-execution
//! mitigations, which move BPF and syscall costs between machines of one kind
//! (ENGINEERING.md §7). Every bench section prints it with its figures.

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn describe() -> String {
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = read("/proc/sys/kernel/osrelease");
    // The mitigations that sit on the syscall and BPF paths; the others are listed by
    // name when they are active.
    let dir = "/sys/devices/system/cpu/vulnerabilities";
    let mut others = Vec::new();
    let mut named = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let state = read(&format!("{dir}/{name}"));
            if ["spectre_v2", "retbleed", "spec_rstack_overflow"].contains(&name.as_str()) {
                named.push(format!("{name}: {state}"));
            } else if state.starts_with("Mitigation") {
                others.push(name);
            }
        }
    }
    format!(
        "{cpu}, {cores} cores, kernel {kernel}; {}; other mitigations: {}",
        named.join("; "),
        if others.is_empty() {
            "none".to_string()
        } else {
            others.join(", ")
        }
    )
}

pub fn print() {
    println!("machine: {}", describe());
}
