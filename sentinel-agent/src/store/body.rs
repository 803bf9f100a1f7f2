//! How an event is kept in the `body` column. Exec and connect events, nearly every row, are
//! a compact binary blob: a format byte, then the postcard encoding of the host and the body
//! (the time is the row's `ts_ns`). Writing them as JSON was a quarter of the agent's work
//! per event, almost all of it escaping strings. Alerts, decisions and cpu events stay JSON
//! text: they are few, they change shape more often, and the ledger reads alerts with
//! `json_extract`. Rows written as JSON by older agents read back as before: SQLite keeps
//! each value's type, so a text body is JSON and a blob is binary. JSON is for what leaves
//! the agent: `tail`, the live stream and the fleet.
//!
//! Format bytes of a binary body: 1, 2 and 3 are one event each (the layouts below, 3 the
//! newest); 4 is a packed row of several events ([`pack`](super::pack)), the only one the
//! writer makes for exec and connect events now. All stay readable.

use std::{
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

use crate::{
    enrich::container::Container,
    event::{Body, ConnectBody, ExecBody, Record},
};

/// The first byte of a binary body: the layout below. A change to `ExecBody` or `ConnectBody`
/// needs a new byte (and the old layout kept readable), because postcard is not
/// self-describing. Version 2 added `container` (exec, connect) and `domain` (connect);
/// version-1 rows read back without them. Version 3 added the container's `network_relay`;
/// version-2 rows read back with none.
const BINARY_V1: u8 = 1;
const BINARY_V2: u8 = 2;
const BINARY_V3: u8 = 3;

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
    #[error("packed body of unknown kind {0}")]
    PackKind(u8),
    #[error("the row says {column} events, its body holds {body}")]
    Count { column: i64, body: usize },
    #[error("time out of range")]
    Time,
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

/// The version-1 layout: the bodies before `container`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
enum CompactV1 {
    Exec(ExecV1),
    Connect(ConnectV1),
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ExecV1 {
    pid: u32,
    ppid: u32,
    uid: u32,
    comm: String,
    filename: String,
    argv: Vec<String>,
    ancestors: Vec<Arc<str>>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ConnectV1 {
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
    fn from(old: CompactV1) -> Self {
        match old {
            CompactV1::Exec(e) => Compact::Exec(ExecBody {
                pid: e.pid,
                ppid: e.ppid,
                uid: e.uid,
                comm: e.comm,
                filename: e.filename.into(),
                argv: e.argv,
                ancestors: e.ancestors,
                container: None,
            }),
            CompactV1::Connect(c) => Compact::Connect(ConnectBody {
                pid: c.pid,
                comm: c.comm,
                uid: c.uid,
                family: c.family,
                saddr: c.saddr,
                daddr: c.daddr,
                dport: c.dport,
                country: c.country,
                container: None,
                domain: None,
            }),
        }
    }
}

/// The version-2 layout: the container without `network_relay`.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
enum CompactV2 {
    Exec(ExecV2),
    Connect(ConnectV2),
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ContainerV2 {
    id: String,
    runtime: String,
    name: Option<String>,
    image: Option<String>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ExecV2 {
    pid: u32,
    ppid: u32,
    uid: u32,
    comm: String,
    filename: String,
    argv: Vec<String>,
    ancestors: Vec<Arc<str>>,
    container: Option<ContainerV2>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct ConnectV2 {
    pid: u32,
    comm: String,
    uid: u32,
    family: u8,
    saddr: std::net::IpAddr,
    daddr: std::net::IpAddr,
    dport: u16,
    country: Option<String>,
    container: Option<ContainerV2>,
    domain: Option<String>,
}

impl From<ContainerV2> for Arc<Container> {
    fn from(c: ContainerV2) -> Self {
        Arc::new(Container {
            id: c.id,
            runtime: c.runtime,
            name: c.name,
            image: c.image,
            network_relay: None,
        })
    }
}

impl From<CompactV2> for Compact {
    fn from(old: CompactV2) -> Self {
        match old {
            CompactV2::Exec(e) => Compact::Exec(ExecBody {
                pid: e.pid,
                ppid: e.ppid,
                uid: e.uid,
                comm: e.comm,
                filename: e.filename.into(),
                argv: e.argv,
                ancestors: e.ancestors,
                container: e.container.map(Into::into),
            }),
            CompactV2::Connect(c) => Compact::Connect(ConnectBody {
                pid: c.pid,
                comm: c.comm,
                uid: c.uid,
                family: c.family,
                saddr: c.saddr,
                daddr: c.daddr,
                dport: c.dport,
                country: c.country,
                container: c.container.map(Into::into),
                domain: c.domain,
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
    buf.push(BINARY_V3);
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
        BINARY_V3 => postcard::from_bytes(rest)?,
        BINARY_V2 => {
            let (host, old): (Arc<str>, CompactV2) = postcard::from_bytes(rest)?;
            (host, old.into())
        }
        BINARY_V1 => {
            let (host, old): (Arc<str>, CompactV1) = postcard::from_bytes(rest)?;
            (host, old.into())
        }
        other => return Err(BodyError::UnknownFormat(other)),
    };
    let body = match compact {
        Compact::Exec(b) => Body::Exec(b),
        Compact::Connect(b) => Body::Connect(b),
    };
    Ok(Record {
        ts: stamp(ts_ns.max(0).div_euclid(1_000_000))?,
        host,
        body,
    })
}

/// Years after 9999 have no RFC 3339 form (humantime refuses them).
const LAST_MS: i64 = 253_402_300_799_999;

/// The RFC 3339 stamp of `ms` milliseconds after the epoch (before it: the epoch); a time
/// past the year 9999 (a corrupt row) is an error, not a panic.
pub fn stamp(ms: i64) -> Result<crate::event::Ts, BodyError> {
    if ms > LAST_MS {
        return Err(BodyError::Time);
    }
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    Ok(humantime::format_rfc3339_millis(at).to_string().into())
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
                container: None,
            }),
        )
    }

    fn exec_in_container() -> Record {
        let mut r = exec();
        if let Body::Exec(b) = &mut r.body {
            b.container = Some(Arc::new(crate::enrich::container::Container {
                id: "ab".repeat(32),
                runtime: "podman".into(),
                name: Some("web".into()),
                image: None,
                network_relay: None,
            }));
        }
        r
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
                container: None,
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
        for r in [
            exec(),
            exec_in_container(),
            connect("2001:db8::5"),
            connect("198.51.100.9"),
        ] {
            let (encoding, back) = round_trip(&r);
            assert_eq!(encoding, Encoding::Binary);
            assert_eq!(back, r);
        }
    }

    #[test]
    fn version_1_rows_read_back_without_a_container() {
        let old = CompactV1::Exec(ExecV1 {
            pid: 42,
            ppid: 1,
            uid: 33,
            comm: "sh".into(),
            filename: "/bin/sh".into(),
            argv: vec!["sh".into()],
            ancestors: vec!["nginx".into()],
        });
        let mut blob = vec![BINARY_V1];
        blob.extend(postcard::to_allocvec(&("web-1", old)).unwrap());
        let back = decode(0, ValueRef::Blob(&blob)).unwrap();
        let Body::Exec(b) = back.body else {
            panic!("not an exec")
        };
        assert_eq!((b.pid, b.comm.as_str(), b.container), (42, "sh", None));
    }

    #[test]
    fn version_2_rows_read_back_with_no_network_relay() {
        let old = CompactV2::Connect(ConnectV2 {
            pid: 7,
            comm: "curl".into(),
            uid: 0,
            family: 4,
            saddr: "198.51.100.1".parse().unwrap(),
            daddr: "198.51.100.9".parse().unwrap(),
            dport: 443,
            country: None,
            container: Some(ContainerV2 {
                id: "ab".repeat(32),
                runtime: "podman".into(),
                name: Some("web".into()),
                image: None,
            }),
            domain: Some("www.example.test".into()),
        });
        let mut blob = vec![BINARY_V2];
        blob.extend(postcard::to_allocvec(&("web-1", old)).unwrap());
        let Body::Connect(b) = decode(0, ValueRef::Blob(&blob)).unwrap().body else {
            panic!("not a connect")
        };
        let c = b.container.expect("the container");
        assert_eq!(
            (c.name.as_deref(), c.network_relay.as_deref()),
            (Some("web"), None)
        );
        assert_eq!(b.domain.as_deref(), Some("www.example.test"));
    }

    #[test]
    fn a_relays_container_comes_back_marked() {
        let mut r = connect("198.51.100.9");
        if let Body::Connect(b) = &mut r.body {
            b.container = Some(Arc::new(Container {
                id: "ab".repeat(32),
                runtime: "podman".into(),
                name: Some("web".into()),
                image: None,
                network_relay: Some("slirp4netns".into()),
            }));
        }
        assert_eq!(round_trip(&r).1, r);
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
