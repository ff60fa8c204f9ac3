//! A small server-sent events reader for the job event stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use reqwest::{RequestBuilder, StatusCode};

use crate::types::StatusDocument;
use crate::{problem_error, Error, Result};

/// Reconnections in a row (without an event in between) before the stream gives up.
const MAX_RECONNECTS: u32 = 5;

type Bytes = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// One event as it came off the wire.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Event {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

/// Splits an SSE byte stream into events (lines end in `\n`, `\r\n` or `\r`).
#[derive(Default)]
pub(crate) struct Parser {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    /// The last byte fed was a `\r` ending a line (a following `\n` belongs to it).
    after_cr: bool,
}

impl Parser {
    pub fn feed(&mut self, chunk: &[u8], out: &mut VecDeque<Event>) {
        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.buffer);
                    self.line(&String::from_utf8_lossy(&line), out);
                }
                _ => self.buffer.push(byte),
            }
        }
    }

    fn line(&mut self, line: &str, out: &mut VecDeque<Event>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push_back(Event {
                    event: self.event.take(),
                    data,
                    id: self.id.clone(),
                });
            }
            self.event = None;
            return;
        }
        if line.starts_with(':') {
            return; // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            _ => {} // `retry` and unknown fields
        }
    }

    /// Forgets a partly read event (after a dropped connection).
    fn reset(&mut self) {
        let id = self.id.take();
        *self = Parser::default();
        self.id = id;
    }
}

struct State {
    request: RequestBuilder,
    body: Option<Bytes>,
    parser: Parser,
    ready: VecDeque<Event>,
    reconnects: u32,
    done: bool,
}

/// The status documents of a job's event stream, resuming with `Last-Event-ID` when the
/// connection drops before the terminal event.
pub(crate) fn status_stream(
    request: RequestBuilder,
) -> impl Stream<Item = Result<StatusDocument>> + Send + 'static {
    let state = State {
        request,
        body: None,
        parser: Parser::default(),
        ready: VecDeque::new(),
        reconnects: 0,
        done: false,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        let item = next(&mut s).await?;
        Some((item, s))
    })
}

async fn next(s: &mut State) -> Option<Result<StatusDocument>> {
    loop {
        if s.done {
            return None;
        }
        if let Some(event) = s.ready.pop_front() {
            match serde_json::from_str::<StatusDocument>(&event.data) {
                Ok(doc) => {
                    s.reconnects = 0;
                    s.done = doc.status.is_terminal();
                    return Some(Ok(doc));
                }
                // Events this client does not know about (other names, other data): skip.
                Err(_) if !matches!(event.event.as_deref(), None | Some("status" | "progress")) => {
                    continue
                }
                Err(e) => {
                    s.done = true;
                    return Some(Err(Error::InvalidResponse(format!(
                        "event data is not a status document: {e}"
                    ))));
                }
            }
        }
        let Some(body) = s.body.as_mut() else {
            match connect(s).await {
                Ok(body) => s.body = Some(body),
                Err(e) => {
                    s.done = true;
                    return Some(Err(e));
                }
            }
            continue;
        };
        match body.next().await {
            Some(Ok(chunk)) => s.parser.feed(&chunk, &mut s.ready),
            end => {
                // The stream ended (or broke) before the terminal event: resume.
                s.body = None;
                s.parser.reset();
                s.reconnects += 1;
                if s.reconnects > MAX_RECONNECTS {
                    s.done = true;
                    return Some(Err(match end {
                        Some(Err(e)) => Error::Transport(e),
                        _ => Error::InvalidResponse(
                            "event stream ended before the terminal event".into(),
                        ),
                    }));
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(s.reconnects))).await;
            }
        }
    }
}

async fn connect(s: &mut State) -> Result<Bytes> {
    let mut request = s
        .request
        .try_clone()
        .ok_or_else(|| Error::InvalidResponse("event request cannot be repeated".into()))?;
    if let Some(id) = &s.parser.id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await?;
    if response.status() != StatusCode::OK {
        return Err(problem_error(response).await);
    }
    Ok(Box::pin(response.bytes_stream()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_across_chunks_and_line_endings() {
        let mut parser = Parser::default();
        let mut out = VecDeque::new();
        parser.feed(
            b": keep-alive\n\nid: abc\r\nevent: status\r\ndata: {\"a\"",
            &mut out,
        );
        assert!(out.is_empty());
        parser.feed(b":1}\r\n\r\nevent: progress\rdata:x\rdata: y\r\r", &mut out);
        assert_eq!(
            out.pop_front(),
            Some(Event {
                event: Some("status".into()),
                data: "{\"a\":1}".into(),
                id: Some("abc".into()),
            })
        );
        assert_eq!(
            out.pop_front(),
            Some(Event {
                event: Some("progress".into()),
                data: "x\ny".into(),
                id: Some("abc".into()),
            })
        );
        assert!(out.is_empty());
    }
}
