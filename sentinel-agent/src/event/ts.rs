//! An event's timestamp as text, kept inside the record: every event has one, and a heap
//! string for each was one allocation per exec and per connect. The text is whatever the
//! record was made or read with (RFC 3339 from the agent, anything from a stored or shipped
//! record), so a longer one is kept on the heap rather than cut.

use std::{fmt, ops::Deref};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest text kept inline; `2026-12-07T05:41:44.123Z` is 24 bytes.
const INLINE: usize = 30;

/// An event's timestamp: a `str` kept inline up to [`INLINE`] bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Ts(Repr);

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl Ts {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                // SAFETY: `bytes[..len]` was copied from a `str` (the only constructors are
                // `From<&str>` and `From<String>`), so it is UTF-8.
                unsafe { std::str::from_utf8_unchecked(&bytes[..usize::from(*len)]) }
            }
            Repr::Heap(text) => text,
        }
    }
}

impl Ts {
    /// `head` followed by the ASCII bytes `tail`, without a string in between.
    pub fn concat(head: &str, tail: &[u8; 4]) -> Ts {
        let len = head.len() + tail.len();
        if len > INLINE || !tail.is_ascii() {
            return Ts::from(format!("{head}{}", String::from_utf8_lossy(tail)));
        }
        let mut bytes = [0; INLINE];
        bytes[..head.len()].copy_from_slice(head.as_bytes());
        bytes[head.len()..len].copy_from_slice(tail);
        Ts(Repr::Inline {
            len: len as u8,
            bytes,
        })
    }
}

impl From<&str> for Ts {
    fn from(text: &str) -> Self {
        if text.len() > INLINE {
            return Ts(Repr::Heap(text.into()));
        }
        let mut bytes = [0; INLINE];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Ts(Repr::Inline {
            len: text.len() as u8,
            bytes,
        })
    }
}

impl From<String> for Ts {
    fn from(text: String) -> Self {
        if text.len() > INLINE {
            return Ts(Repr::Heap(text.into_boxed_str()));
        }
        Ts::from(text.as_str())
    }
}

impl Deref for Ts {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<&str> for Ts {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for Ts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Debug for Ts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Ts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Owned: a record is read from JSON with escapes and from buffers that do not outlive it.
        String::deserialize(d).map(Ts::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_inline_and_long_text_is_kept_whole() {
        let ts = Ts::from("2026-12-07T05:41:44.123Z");
        assert!(matches!(ts.0, Repr::Inline { len: 24, .. }));
        assert_eq!(ts, "2026-12-07T05:41:44.123Z");
        let edge = "x".repeat(INLINE);
        assert!(matches!(Ts::from(edge.as_str()).0, Repr::Inline { .. }));
        assert_eq!(Ts::from(edge.clone()).as_str(), edge);
        let long = format!("+10000-01-01T00:00:00.000000000Z{}", "é".repeat(40));
        assert!(matches!(Ts::from(long.as_str()).0, Repr::Heap(_)));
        assert_eq!(Ts::from(long.clone()).as_str(), long);
        assert_eq!(Ts::from(""), "");
        assert_eq!(Ts::from(String::from("é")).as_str(), "é");
    }

    #[test]
    fn it_reads_and_writes_as_a_json_string() {
        let ts: Ts = serde_json::from_str(r#""2026-12-07T05:41:44.123Z""#).unwrap();
        assert_eq!(ts, "2026-12-07T05:41:44.123Z");
        assert_eq!(
            serde_json::to_string(&ts).unwrap(),
            r#""2026-12-07T05:41:44.123Z""#
        );
        let escaped: Ts = serde_json::from_str(r#""a\nb""#).unwrap();
        assert_eq!(escaped, "a\nb");
        assert!(serde_json::from_str::<Ts>("12").is_err());
    }

    #[test]
    fn concat_is_head_then_tail() {
        let ts = Ts::concat("2026-12-07T05:41:44.", b"123Z");
        assert!(matches!(ts.0, Repr::Inline { len: 24, .. }));
        assert_eq!(ts, "2026-12-07T05:41:44.123Z");
        let long = "y".repeat(INLINE);
        assert_eq!(Ts::concat(&long, b"123Z").as_str(), format!("{long}123Z"));
        assert_eq!(Ts::concat("a", b"\xff\0\0Z"), "a\u{fffd}\0\0Z");
    }

    #[test]
    fn it_pads_like_a_str() {
        assert_eq!(format!("[{:<6}]", Ts::from("ab")), "[ab    ]");
        assert_eq!(format!("{:?}", Ts::from("a\"b")), r#""a\"b""#);
    }
}
