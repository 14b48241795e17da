//! Reading the YAML file: syntax and type errors with their key path and line, unknown
//! keys refused by path, and a file that a non-root user could rewrite refused when the
//! agent runs as root (the file decides what the agent reads and where data goes).

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::{Config, Problem, Problems};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    // The OS error is part of the message (not a source) so that it is printed once.
    #[error("config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}:\n{problems}")]
    Invalid { path: PathBuf, problems: Problems },
    #[error(
        "config file {path}: refused: {what} is writable by {who}, so a non-root user could \
         change what the agent (running as root) reads and where it sends data; make it \
         owned by root and not group- or world-writable (chown root:root; chmod go-w)"
    )]
    Writable {
        path: PathBuf,
        what: PathBuf,
        who: String,
    },
}

/// Reads, parses and validates `path`. Returns the tree and the text it came from.
pub fn load_file(path: &Path) -> Result<(Config, String), FileError> {
    let text = std::fs::read_to_string(path).map_err(|error| FileError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let config = parse_str(&text).map_err(|problems| FileError::Invalid {
        path: path.to_path_buf(),
        problems,
    })?;
    Ok((config, text))
}

/// Parses and validates YAML text. An empty file is an error: it is far more often a
/// truncated or misplaced file than a wish for every default (`{}` says that).
pub fn parse_str(text: &str) -> Result<Config, Problems> {
    let blank = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if blank {
        let mut p = Problems::default();
        p.push("(file)", "the file is empty; write `{}` for all defaults");
        return Err(p);
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.location().map(|l| l.line());
        Problems(vec![Problem {
            path: if path == "." { "(file)".into() } else { path },
            message: strip_location(&inner.to_string()),
            line,
        }])
    })?;
    config.validate().map_err(|mut problems| {
        for p in &mut problems.0 {
            p.line = locate(text, &p.path);
        }
        problems
    })?;
    Ok(config)
}

/// serde_yaml appends " at line L column C" to its messages; the line is shown separately.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// The line (1-based) of a key path such as `syscalls.watch_paths[2]` in block-style
/// YAML, found by following indentation; None when the text does not show it plainly
/// (flow style, anchors), in which case the key path alone names the place.
fn locate(text: &str, path: &str) -> Option<usize> {
    let mut segments = Vec::new();
    for part in path.split('.') {
        match part.split_once('[') {
            Some((key, rest)) => {
                if !key.is_empty() {
                    segments.push((key.to_string(), None));
                }
                let idx: usize = rest.trim_end_matches(']').parse().ok()?;
                segments.push((String::new(), Some(idx)));
            }
            None => segments.push((part.to_string(), None)),
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    let (mut from, mut min_indent, mut found) = (0usize, 0usize, None);
    for (key, index) in segments {
        let mut seen = 0usize;
        let mut hit = None;
        for (i, line) in lines.iter().enumerate().skip(from) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            if i > from && indent < min_indent {
                break;
            }
            match index {
                None if trimmed.starts_with(&format!("{key}:")) => {
                    hit = Some((i, indent + 1));
                    break;
                }
                Some(n) if trimmed.starts_with("- ") || trimmed == "-" => {
                    if seen == n {
                        hit = Some((i, indent + 1));
                        break;
                    }
                    seen += 1;
                }
                _ => {}
            }
        }
        let (i, indent) = hit?;
        found = Some(i + 1);
        from = i;
        min_indent = indent;
    }
    found
}

/// Refuses, when we are root, a config file (or a directory above it) that a non-root
/// user can write. A read-only mount (a Kubernetes ConfigMap volume) cannot be written
/// whatever its mode bits say.
pub fn check_file_ownership(path: &Path) -> Result<(), FileError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let read_err = |error| FileError::Read {
        path: path.to_path_buf(),
        error,
    };
    let real = std::fs::canonicalize(path).map_err(read_err)?;
    // The path as given (a ConfigMap's `config.yaml` symlink lives in the watched
    // directory) and the file it resolves to, with every directory above each.
    let mut places = vec![real.clone()];
    places.extend(real.ancestors().skip(1).map(Path::to_path_buf));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::canonicalize(dir) {
            places.extend(d.ancestors().map(Path::to_path_buf));
        }
    }
    places.dedup();
    for place in places {
        let Ok(meta) = std::fs::metadata(&place) else {
            continue;
        };
        if read_only_mount(&place) {
            continue;
        }
        let mode = meta.mode();
        let sticky = mode & libc::S_ISVTX != 0;
        let who = if meta.uid() != 0 {
            Some(format!("its owner, uid {}", meta.uid()))
        } else if mode & 0o002 != 0 && !(sticky && place != real) {
            Some("everyone (mode o+w)".to_string())
        } else if mode & 0o020 != 0 && meta.gid() != 0 && !(sticky && place != real) {
            Some(format!("group {} (mode g+w)", meta.gid()))
        } else {
            None
        };
        if let Some(who) = who {
            return Err(FileError::Writable {
                path: path.to_path_buf(),
                what: place,
                who,
            });
        }
    }
    Ok(())
}

fn read_only_mount(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        libc::statvfs(c.as_ptr(), &mut s) == 0 && s.f_flag & libc::ST_RDONLY != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> Problem {
        parse_str(text).unwrap_err().0.remove(0)
    }

    #[test]
    fn unknown_key_names_its_path_and_line() {
        let p = problem("syscalls:\n  interval: 5s\n  watch_pathz: [/x]\n");
        assert_eq!(p.path, "syscalls.watch_pathz");
        assert!(p.message.contains("unknown field `watch_pathz`"), "{p}");
        assert_eq!(p.line, Some(3));
        let p = problem("agnet: {}\n");
        assert!(p.message.contains("unknown field `agnet`"), "{p}");
    }

    #[test]
    fn wrong_type_and_syntax_errors_have_lines() {
        let p = problem("tcp:\n  ring_bytes: lots\n");
        assert_eq!(p.path, "tcp.ring_bytes");
        assert_eq!(p.line, Some(2));
        let p = problem("tcp:\n  ring_bytes: [1\n");
        assert!(p.line.is_some(), "{p}");
    }

    #[test]
    fn validation_errors_name_path_and_line() {
        let e =
            parse_str("syscalls:\n  watch_paths:\n    - /etc/a\n    - /etc/b\n    - etc/shadow\n")
                .unwrap_err();
        let p = &e.0[0];
        assert_eq!(p.path, "syscalls.watch_paths[2]");
        assert!(
            p.message.contains("\"etc/shadow\" is not an absolute path"),
            "{p}"
        );
        assert_eq!(p.line, Some(5));
        let e = parse_str("tcp:\n  ring_bytes: 1000\n").unwrap_err();
        assert_eq!(e.0[0].path, "tcp.ring_bytes");
        assert_eq!(e.0[0].line, Some(2));
    }

    #[test]
    fn empty_file_is_an_error_and_braces_are_defaults() {
        assert!(parse_str("").is_err());
        assert!(parse_str("  \n# nothing\n").is_err());
        assert_eq!(parse_str("{}").unwrap(), Config::default());
    }

    #[test]
    fn every_problem_is_reported() {
        let e = parse_str("tcp:\n  ring_bytes: 1000\n  max_connections: 0\n").unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
    }

    #[test]
    fn locate_follows_indentation() {
        let t = "a:\n  b: 1\nc:\n  b: 2\n  d:\n    - x\n    - y\n";
        assert_eq!(locate(t, "c.b"), Some(4));
        assert_eq!(locate(t, "c.d[1]"), Some(7));
        assert_eq!(locate(t, "c.e"), None);
    }
}
