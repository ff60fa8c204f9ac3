//! Timestamps in status documents and messages, serialized exactly as chrono's own `Serialize`
//! writes them (RFC 3339, `Z`, 0, 3, 6 or 9 fraction digits: `to_rfc3339_opts(AutoSi, true)`
//! calls the same formatter), but handed to serde as one finished string. chrono's impl goes
//! through `collect_str`, and serde_json escapes each of the dozen pieces the formatter writes
//! separately: about a twentieth of a worker's instructions per job went there, with four
//! documents (and their timestamps) written per job. Deserialization is chrono's.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// For `Option<DateTime<Utc>>` fields (with `skip_serializing_if = "Option::is_none"`).
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(
        at: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => super::serialize(at, serializer),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone};
    use serde::Serialize;

    use super::*;

    #[derive(Serialize)]
    struct Ours {
        #[serde(serialize_with = "super::serialize")]
        at: DateTime<Utc>,
        #[serde(serialize_with = "super::option::serialize")]
        maybe: Option<DateTime<Utc>>,
    }

    #[derive(Serialize)]
    struct Chronos {
        at: DateTime<Utc>,
        maybe: Option<DateTime<Utc>>,
    }

    #[test]
    fn the_same_bytes_as_chrono_writes() {
        let mut cases = vec![Utc::now()];
        // Every fraction width (none, milli, micro, nano), a leap second, the ends of the
        // four-digit years and beyond them (chrono writes a sign there).
        for (y, nanos) in [
            (2026, 0),
            (2026, 123_000_000),
            (2026, 123_456_000),
            (2026, 123_456_789),
            (2026, 1_500_000_000),
            (0, 1),
            (9999, 999_999_999),
            (10_000, 5_000),
            (-1, 0),
        ] {
            let date = NaiveDate::from_ymd_opt(y, 12, 31).expect("a date");
            let sec = if nanos >= 1_000_000_000 { 59 } else { 7 };
            let time = date.and_hms_nano_opt(23, 59, sec, nanos).expect("a time");
            cases.push(Utc.from_utc_datetime(&time));
        }
        for at in cases {
            for maybe in [None, Some(at)] {
                let ours = serde_json::to_string(&Ours { at, maybe }).expect("ours");
                let chronos = serde_json::to_string(&Chronos { at, maybe }).expect("chrono's");
                assert_eq!(ours, chronos);
            }
        }
    }
}
