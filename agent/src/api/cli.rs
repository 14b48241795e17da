//! `hostscope events` and `hostscope status`: what they print. The agent sends each
//! record's JSON line and, for text output, its text line (the request's `with_text`), so
//! both look exactly like `hostscope run`'s output.

use std::{io::Write, path::Path};

use super::{
    client::{Client, ClientError},
    proto::{events_reply::Reply, EventsRequest},
};
use crate::output::OutputFormat;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the stream ended without the agent's end notice (the agent died, or the connection was cut)")]
    Cut,
    #[error("writing to stdout: {0}")]
    Output(#[from] std::io::Error),
}

/// Prints the records the agent streams until the stream ends. Missed records are told
/// on stderr (text) or as `{"type":"dropped","count":N}` lines (JSON).
pub async fn events(
    socket: &Path,
    request: EventsRequest,
    format: OutputFormat,
    out: &mut impl Write,
) -> Result<(), CliError> {
    match stream_events(socket, request, format, out).await {
        // `hostscope events | head`: the reader is done, and so are we.
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

async fn stream_events(
    socket: &Path,
    mut request: EventsRequest,
    format: OutputFormat,
    out: &mut impl Write,
) -> Result<(), CliError> {
    request.with_text = format == OutputFormat::Text;
    let mut client = Client::connect(socket).await?;
    let mut stream = client.events(request).await?;
    loop {
        let Some(reply) = client.next(&mut stream).await? else {
            return Err(CliError::Cut);
        };
        match reply.reply {
            Some(Reply::Record(r)) => match format {
                OutputFormat::Text => writeln!(out, "{}", r.text)?,
                OutputFormat::Json => writeln!(out, "{}", r.json)?,
                OutputFormat::None => {}
            },
            Some(Reply::Dropped(d)) => match format {
                OutputFormat::Json => writeln!(out, r#"{{"type":"dropped","count":{}}}"#, d.count)?,
                _ => {
                    out.flush()?;
                    eprintln!(
                        "hostscope: {} records dropped: this client did not keep up",
                        d.count
                    );
                }
            },
            Some(Reply::End(end)) => {
                out.flush()?;
                if end.reason != "end of history" {
                    eprintln!("hostscope: {}", end.reason);
                }
                return Ok(());
            }
            None => {}
        }
        out.flush()?;
    }
}

/// Prints the agent's status document: its JSON, or its text form, as the agent sent them.
pub async fn status(
    socket: &Path,
    format: OutputFormat,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut client = Client::connect(socket).await?;
    let reply = client.status().await?;
    match format {
        OutputFormat::Text => writeln!(out, "{}", reply.text.trim_end())?,
        _ => writeln!(out, "{}", reply.json)?,
    }
    Ok(())
}
