//! `hostscope config default`: the built-in tree as YAML, each key preceded by its help.
//! The values come from serializing `Config::default()`, so the text cannot disagree with
//! the code; a test checks that every key has help and that the text parses back.

use super::{docs, Config};

const HEADER: &str = "\
# hostscope configuration: every key with its built-in default.
# Use with `hostscope run --config FILE`; check a file with `hostscope config check FILE`.
# Precedence, lowest first: these defaults, the file, the environment (OTEL_*), flags.
# The running agent reloads the file when it changes (and on SIGHUP); keys marked
# (restart) keep their running value until the agent restarts.
";

/// The default configuration as commented YAML.
pub fn default_yaml() -> String {
    let body = serde_yaml_ng::to_string(&Config::default()).unwrap_or_default();
    let mut out = String::from(HEADER);
    // (indent, key) of the mappings enclosing the current line.
    let mut stack: Vec<(usize, String)> = Vec::new();
    for line in body.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let key = (!trimmed.starts_with('-'))
            .then(|| trimmed.split_once(':').map(|(k, _)| k.to_string()))
            .flatten();
        if let Some(key) = key {
            while stack.last().is_some_and(|(i, _)| *i >= indent) {
                stack.pop();
            }
            stack.push((indent, key));
            let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
            if let Some(help) = help_for(&path.join(".")) {
                if indent == 0 {
                    out.push('\n');
                }
                for h in help.lines() {
                    out.push_str(&" ".repeat(indent));
                    out.push_str("# ");
                    out.push_str(h);
                    out.push('\n');
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Help for a full key path (`syscalls.interval`); a section's own help is its `""` entry.
pub fn help_for(path: &str) -> Option<String> {
    let (section, rest) = path.split_once('.').unwrap_or((path, ""));
    let (_, table) = docs().into_iter().find(|(s, _)| *s == section)?;
    let text = table.iter().find(|(k, _)| *k == rest).map(|(_, t)| *t)?;
    let restart = if super::diff::needs_restart(path) && !rest.is_empty() {
        " (restart)"
    } else {
        ""
    };
    Some(format!("{text}{restart}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Every key down to the leaves (empty maps and lists are leaves).
    fn leaves(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                if !prefix.is_empty() {
                    out.push(prefix.to_string());
                }
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&p, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }

    #[test]
    fn default_yaml_parses_back_to_exactly_the_defaults() {
        let text = default_yaml();
        let parsed = crate::config::parse_str(&text).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn every_key_has_help() {
        let mut keys = Vec::new();
        leaves(
            "",
            &serde_json::to_value(Config::default()).unwrap(),
            &mut keys,
        );
        let missing: Vec<_> = keys.iter().filter(|k| help_for(k).is_none()).collect();
        assert!(missing.is_empty(), "keys without help: {missing:?}");
        // And no help for keys that do not exist.
        for (section, table) in docs() {
            for (k, _) in table {
                let full = if k.is_empty() {
                    section.to_string()
                } else {
                    format!("{section}.{k}")
                };
                assert!(keys.contains(&full), "help for unknown key {full}");
            }
        }
    }

    #[test]
    fn default_yaml_marks_restart_keys() {
        let text = default_yaml();
        assert!(text.contains("(restart)"));
        assert!(text.contains("# ") && text.contains("syscalls:"));
    }
}
