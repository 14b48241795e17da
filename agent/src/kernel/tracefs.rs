//! Tracepoint presence and record layouts, read from tracefs `format` files so that the
//! probes use the running kernel's field offsets instead of assumed ones.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracepoint {category}:{name} does not exist on this kernel ({path} missing)")]
    Missing {
        category: String,
        name: String,
        path: PathBuf,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub fields: Vec<Field>,
}

impl Format {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Parses the text of `events/<category>/<name>/format`.
    pub fn parse(text: &str) -> Format {
        let fields = text.lines().filter_map(parse_field_line).collect();
        Format { fields }
    }
}

/// `\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;`
fn parse_field_line(line: &str) -> Option<Field> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    for part in line.trim().split(';') {
        let part = part.trim();
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d);
        } else if let Some(o) = part.strip_prefix("offset:") {
            offset = o.parse().ok();
        } else if let Some(s) = part.strip_prefix("size:") {
            size = s.parse().ok();
        }
    }
    let last = decl?.split_whitespace().last()?;
    let name = last.split('[').next()?.trim_start_matches('*');
    Some(Field {
        name: name.to_string(),
        offset: offset?,
        size: size?,
    })
}

/// A tracefs mount: the place to find `events/`.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    pub fn new(root: PathBuf) -> Self {
        Tracefs { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn event_dir(&self, category: &str, name: &str) -> PathBuf {
        self.root.join("events").join(category).join(name)
    }

    pub fn format(&self, category: &str, name: &str) -> Result<Format, TracefsError> {
        let dir = self.event_dir(category, name);
        if !dir.exists() {
            return Err(TracefsError::Missing {
                category: category.to_string(),
                name: name.to_string(),
                path: dir,
            });
        }
        let path = dir.join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Format::parse(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRANSMIT: &str = "name: tcp_retransmit_skb
ID: 1520
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;

print fmt: \"skbaddr=%p\", REC->skbaddr
";

    #[test]
    fn parses_fields_with_pointers_and_arrays() {
        let f = Format::parse(RETRANSMIT);
        assert_eq!(f.fields.len(), 5);
        let sk = f.field("skaddr").unwrap();
        assert_eq!((sk.offset, sk.size), (16, 8));
        assert_eq!(f.field("saddr_v6").unwrap().offset, 42);
        assert_eq!(f.field("state").unwrap().size, 4);
        assert!(f.field("print").is_none());
    }

    #[test]
    fn garbage_yields_no_fields() {
        assert!(Format::parse("field:\n;;;offset:x;size:\n\u{0}")
            .fields
            .is_empty());
    }
}
