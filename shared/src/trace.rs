//! W3C Trace Context (`traceparent`) carried from the HTTP request through the queue message to
//! the worker, so that the facade's and the worker's log lines of one job share a trace id
//! (and a tracing backend can join them into one trace).
//!
//! Format: `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`.

use std::fmt;

use crate::hex::Hex;

/// AMQP header (and HTTP header) that carries the context.
pub const HEADER: &str = "traceparent";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

impl TraceContext {
    /// A new trace (sampled).
    pub fn new_root() -> Self {
        let bits = uuid::Uuid::new_v4().as_u128();
        TraceContext {
            trace_id: bits,
            span_id: (uuid::Uuid::new_v4().as_u128() as u64).max(1),
            flags: 1,
        }
    }

    /// The same trace, with a new span of ours as the parent of what follows.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: (uuid::Uuid::new_v4().as_u128() as u64).max(1),
            ..*self
        }
    }

    /// Parses a `traceparent` value; `None` for anything malformed (an all-zero id included),
    /// as the specification asks.
    pub fn parse(value: &str) -> Option<Self> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        let [version, trace, span, flags] = parts.as_slice() else {
            return None;
        };
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2)
            || *version == "ff"
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|v| *v != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|v| *v != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// (trace id, span id, flags), for handing the context to OpenTelemetry.
    pub fn ids(&self) -> (u128, u64, u8) {
        (self.trace_id, self.span_id, self.flags)
    }

    /// A context from OpenTelemetry's ids; `None` if either id is zero (invalid).
    pub fn from_ids(trace_id: u128, span_id: u64, flags: u8) -> Option<Self> {
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The trace id, 32 lower-case hex digits (what log lines carry).
    pub fn trace_id(&self) -> String {
        self.trace_id_hex().to_string()
    }

    /// The trace id as [`Self::trace_id`] writes it, formatted where it is written (a log
    /// field) instead of into a `String` first.
    pub fn trace_id_hex(&self) -> Hex<32> {
        Hex::new(self.trace_id)
    }
}

/// `00-<trace id>-<span id>-<flags>`.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let span_id = Hex::<16>::new(u128::from(self.span_id));
        let flags = Hex::<2>::new(u128::from(self.flags));
        write!(f, "00-{}-{span_id}-{flags}", self.trace_id_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::parse(v).unwrap();
        assert_eq!(t.to_string(), v);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let c = t.child();
        assert_eq!(c.trace_id(), t.trace_id());
        assert_ne!(c.to_string(), v);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        assert_eq!(TraceContext::new_root().to_string().len(), 55);
    }
}
