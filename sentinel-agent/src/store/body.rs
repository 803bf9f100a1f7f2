//! How an event is kept in the `body` column. Exec and connect events, nearly every row, are
//! a compact binary blob: a format byte, then the postcard encoding of the host and the body
//! (the time is the row's `ts_ns`). Writing them as JSON was a quarter of the agent's work
//! per event, almost all of it escaping strings. Alerts, decisions and cpu events stay JSON
//! text: they are few, they change shape more often, and the ledger reads alerts with
//! `json_extract`. Rows written as JSON by older agents read back as before: SQLite keeps
//! each value's type, so a text body is JSON and a blob is binary. JSON is for what leaves
//! the agent: `tail`, the live stream and the fleet.

use std::{
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

use crate::event::{Body, ConnectBody, ExecBody, Record};

/// The first byte of a binary body: the layout below. A change to `ExecBody` or `ConnectBody`
/// needs a new byte (and the old layout kept readable), because postcard is not
/// self-describing. Version 1: connect bodies without `domain` (read as `domain: None`).
const BINARY_V1: u8 = 1;
/// Version 2: connect bodies carry `domain`.
const BINARY_V2: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Binary(#[from] postcard::Error),
    #[error("binary body of unknown format {0} (written by a newer sentinel?)")]
    UnknownFormat(u8),
    #[error("empty binary body")]
    Empty,
    #[error("body stored as {0}, neither text nor blob")]
    Type(&'static str),
}

#[derive(Serialize)]
enum CompactRef<'a> {
    Exec(&'a ExecBody),
    Connect(&'a ConnectBody),
}

#[derive(Deserialize)]
enum Compact {
    Exec(ExecBody),
    Connect(ConnectBody),
}

/// [`Compact`] as version 1 wrote it.
#[derive(Deserialize)]
enum CompactV1 {
    Exec(ExecBody),
    Connect(ConnectBodyV1),
}

/// `ConnectBody` before `domain`.
#[derive(Deserialize)]
struct ConnectBodyV1 {
    pid: u32,
    comm: String,
    uid: u32,
    family: u8,
    saddr: std::net::IpAddr,
    daddr: std::net::IpAddr,
    dport: u16,
    country: Option<String>,
}

impl From<CompactV1> for Compact {
    fn from(v1: CompactV1) -> Self {
        match v1 {
            CompactV1::Exec(b) => Compact::Exec(b),
            CompactV1::Connect(b) => Compact::Connect(ConnectBody {
                pid: b.pid,
                comm: b.comm,
                uid: b.uid,
                family: b.family,
                saddr: b.saddr,
                daddr: b.daddr,
                dport: b.dport,
                country: b.country,
                domain: None,
            }),
        }
    }
}

/// An encoded body: text (JSON) or a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Binary,
}

/// Encode `r` into `buf` (cleared first); says which encoding it used.
pub fn encode(r: &Record, buf: &mut Vec<u8>) -> Encoding {
    buf.clear();
    let compact = match &r.body {
        Body::Exec(b) => CompactRef::Exec(b),
        Body::Connect(b) => CompactRef::Connect(b),
        _ => {
            serde_json::to_writer(&mut *buf, r).expect("records serialise");
            return Encoding::Json;
        }
    };
    buf.push(BINARY_V2);
    let out = postcard::to_extend(&(&*r.host, compact), std::mem::take(buf))
        .expect("a Vec takes any postcard output");
    *buf = out;
    Encoding::Binary
}

/// The event stored as `body` in a row stamped `ts_ns`.
pub fn decode(ts_ns: i64, body: ValueRef<'_>) -> Result<Record, BodyError> {
    match body {
        ValueRef::Text(text) => Ok(serde_json::from_slice(text)?),
        ValueRef::Blob(blob) => decode_binary(ts_ns, blob),
        ValueRef::Null => Err(BodyError::Type("null")),
        ValueRef::Integer(_) => Err(BodyError::Type("an integer")),
        ValueRef::Real(_) => Err(BodyError::Type("a real")),
    }
}

fn decode_binary(ts_ns: i64, blob: &[u8]) -> Result<Record, BodyError> {
    let (&format, rest) = blob.split_first().ok_or(BodyError::Empty)?;
    let (host, compact): (Arc<str>, Compact) = match format {
        BINARY_V2 => postcard::from_bytes(rest)?,
        BINARY_V1 => {
            let (host, v1): (Arc<str>, CompactV1) = postcard::from_bytes(rest)?;
            (host, v1.into())
        }
        _ => return Err(BodyError::UnknownFormat(format)),
    };
    let body = match compact {
        Compact::Exec(b) => Body::Exec(b),
        Compact::Connect(b) => Body::Connect(b),
    };
    let at = UNIX_EPOCH + Duration::from_nanos(ts_ns.max(0) as u64);
    Ok(Record {
        ts: humantime::format_rfc3339_millis(at).to_string(),
        host,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn exec() -> Record {
        Record::new(
            SystemTime::now(),
            "web-1",
            Body::Exec(ExecBody {
                pid: 42,
                ppid: 1,
                uid: 33,
                comm: "sh\\x1b]".into(),
                filename: "/bin/sh".into(),
                argv: vec!["sh".into(), "-c".into(), "echo \"hi\"".into()],
                ancestors: vec!["nginx".into(), "systemd".into()],
            }),
        )
    }

    fn connect(daddr: &str) -> Record {
        Record::new(
            SystemTime::now(),
            "web-1",
            Body::Connect(ConnectBody {
                pid: 7,
                comm: "curl".into(),
                uid: 0,
                family: if daddr.contains(':') { 6 } else { 4 },
                saddr: "198.51.100.1".parse().unwrap(),
                daddr: daddr.parse().unwrap(),
                dport: 443,
                country: Some("FR".into()),
                domain: Some("www.example.test".into()),
            }),
        )
    }

    fn round_trip(r: &Record) -> (Encoding, Record) {
        let mut buf = Vec::new();
        let encoding = encode(r, &mut buf);
        let value = match encoding {
            Encoding::Json => ValueRef::Text(&buf),
            Encoding::Binary => ValueRef::Blob(&buf),
        };
        (encoding, decode(r.ts_ns(), value).unwrap())
    }

    #[test]
    fn exec_and_connect_are_binary_and_come_back_equal() {
        for r in [exec(), connect("2001:db8::5"), connect("198.51.100.9")] {
            let (encoding, back) = round_trip(&r);
            assert_eq!(encoding, Encoding::Binary);
            assert_eq!(back, r);
        }
    }

    #[test]
    fn version_1_connect_bodies_read_without_a_domain() {
        #[derive(Serialize)]
        enum V1<'a> {
            #[allow(dead_code)]
            Exec(&'a ExecBody),
            Connect(V1Connect),
        }
        #[derive(Serialize)]
        struct V1Connect(
            u32,
            String,
            u32,
            u8,
            std::net::IpAddr,
            std::net::IpAddr,
            u16,
            Option<String>,
        );
        let old = V1Connect(
            7,
            "curl".into(),
            0,
            4,
            "198.51.100.1".parse().unwrap(),
            "198.51.100.9".parse().unwrap(),
            443,
            Some("FR".into()),
        );
        let mut blob = vec![BINARY_V1];
        blob.extend(postcard::to_allocvec(&("web-1", V1::Connect(old))).unwrap());
        let Body::Connect(c) = decode(0, ValueRef::Blob(&blob)).unwrap().body else {
            panic!("not a connect");
        };
        assert_eq!(c.daddr, "198.51.100.9".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(
            (c.dport, c.country.as_deref(), c.domain),
            (443, Some("FR"), None)
        );
    }

    #[test]
    fn other_kinds_stay_json() {
        let alert = crate::event::sample_alert("abc", "198.51.100.7");
        let r = Record::new(SystemTime::now(), "web-1", Body::Alert(Box::new(alert)));
        let mut buf = Vec::new();
        assert_eq!(encode(&r, &mut buf), Encoding::Json);
        let text: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(text["kind"], "alert");
        assert_eq!(round_trip(&r).1, r);
    }

    #[test]
    fn a_binary_body_is_smaller_than_its_json() {
        let r = exec();
        let mut buf = Vec::new();
        encode(&r, &mut buf);
        let json = serde_json::to_vec(&r).unwrap();
        assert!(
            buf.len() * 2 < json.len(),
            "{} vs {}",
            buf.len(),
            json.len()
        );
    }

    #[test]
    fn bad_blobs_are_errors_not_panics() {
        let mut buf = Vec::new();
        encode(&exec(), &mut buf);
        for bad in [&[][..], &[9, 1, 2][..], &buf[..buf.len() / 2]] {
            assert!(decode(0, ValueRef::Blob(bad)).is_err(), "{bad:?}");
        }
        assert!(matches!(
            decode(0, ValueRef::Blob(&[7])),
            Err(BodyError::UnknownFormat(7))
        ));
        assert!(decode(0, ValueRef::Null).is_err());
        assert!(decode(0, ValueRef::Text(b"{not json")).is_err());
    }
}
