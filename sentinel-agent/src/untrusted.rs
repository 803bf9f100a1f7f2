//! Text an attacker controls stays text. A process chooses its own name, path and arguments,
//! so they can carry newlines (a forged second log line), terminal escapes (`ESC [ 31 m`, a
//! cleared screen, a retitled window), bidirectional overrides that reorder what a reader
//! sees, markdown links and URLs. The agent escapes control characters once, where such text
//! enters (`sensors`, the `/proc` reader of `enrich::tree`), so every event, alert detail, log
//! line and `tail` line it makes is one line of visible characters; chat channels
//! additionally [`defang`] links. Escaping is idempotent: an already escaped string passes
//! unchanged, so outputs may escape again for text stored by an older agent.

use std::{borrow::Cow, sync::Arc};

/// Whether `c` must not reach a terminal, a log line or a chat message as itself: the C0 and
/// C1 controls and DEL, the line and paragraph separators, and the invisible characters that
/// reorder text (bidirectional embeddings, overrides, isolates and marks).
fn is_hostile(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every hostile character written as a visible escape: `\n`, `\r`, `\t`,
/// `\x1b` for the other ASCII controls and DEL, `\u{9b}` for everything else. Backslashes are
/// kept as they are (a path or a regular expression reads as typed), which is what makes the
/// escape idempotent. Borrows when there is nothing to escape (the common case).
pub fn escape(text: &str) -> Cow<'_, str> {
    // Printable ASCII (nearly every name and argument) needs no decoding to know it is safe.
    if text.bytes().all(|b| (b' '..=b'~').contains(&b)) || !text.chars().any(is_hostile) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii() && is_hostile(c) => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_hostile(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Bytes a process chose (a name, a path, an argument) as escaped text: invalid UTF-8 is
/// replaced, hostile characters escaped. Printable ASCII, nearly every such text, is copied
/// as it is after one pass.
pub fn text_from(bytes: &[u8]) -> String {
    if let Some(text) = printable_ascii(bytes) {
        return text.to_owned();
    }
    escape(&String::from_utf8_lossy(bytes)).into_owned()
}

/// [`text_from`] as shared text, made in one allocation.
pub fn shared_text_from(bytes: &[u8]) -> Arc<str> {
    match printable_ascii(bytes) {
        Some(text) => Arc::from(text),
        None => Arc::from(text_from(bytes)),
    }
}

/// `bytes` as text when every byte is printable ASCII (no second pass to validate UTF-8).
pub fn printable_ascii(bytes: &[u8]) -> Option<&str> {
    // Every byte is looked at, without an early exit, so the compiler checks 32 at a time:
    // nearly every text passes, and this runs on each name, path and argument of each exec.
    let printable = bytes
        .iter()
        .fold(true, |ok, &b| ok & (b.wrapping_sub(b' ') <= b'~' - b' '));
    if !printable {
        return None;
    }
    // SAFETY: printable ASCII (checked above) is valid UTF-8.
    Some(unsafe { std::str::from_utf8_unchecked(bytes) })
}

/// [`escape`] for an owned string: no copy when there is nothing to escape.
pub fn escaped(text: String) -> String {
    match escape(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(escaped) => escaped,
    }
}

/// A zero-width space: invisible, but no chat client reads a link across it.
const ZWSP: char = '\u{200B}';

/// `text` (escaped) for a chat message: no markdown link (`[x](url)`), no URL (`scheme://…`,
/// bare or in angle brackets, `www.…`) that a chat client would make clickable. A zero-width
/// space breaks each of them; the message reads the same.
pub fn defang(text: &str) -> String {
    let text = escape(text)
        .replace("](", &format!("]{ZWSP}("))
        .replace("://", &format!(":{ZWSP}//"))
        .replace("www.", &format!("www{ZWSP}."))
        .replace("WWW.", &format!("WWW{ZWSP}."));
    break_bare_domains(&text)
}

/// A zero-width space after every dot that a letter follows: `evil.example` is a link to
/// Telegram's (and Slack's) URL detection; `evil.\u{200B}example` is not. Dots before digits
/// stay as they are (addresses and versions are no links, and tests and humans search for
/// `198.51.100.2`).
fn break_bare_domains(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '.' && chars.peek().is_some_and(char::is_ascii_alphabetic) {
            out.push(ZWSP);
        }
    }
    out
}

/// What the chat tests throw at the channels, and how they look at the result.
#[cfg(test)]
pub(crate) mod testing {
    use serde_json::Value;

    /// A process name, path and command line an attacker chose.
    pub const COMM: &str = "\x1b[31mx\ny";
    pub const EXE: &str = "/tmp/[x](http://evil.example)/\x1b[31mrun\n";
    pub const DETAIL: &str = "sh -c x\nforged line \x1b[31mred\u{9b}2J [x](http://evil.example) \
         https://evil.example/bare <http://evil.example|click> www.evil.example";

    /// A pending decision whose process text is all hostile.
    pub fn hostile_decision() -> crate::switch::decision::Decision {
        let mut d = crate::notify::testing::decision("h1", std::time::Duration::from_secs(60));
        d.comm = COMM.into();
        d.exe = Some(EXE.into());
        d.ancestors = vec![COMM.into(), "node".into()];
        d.detail = DETAIL.into();
        d
    }

    /// Every string in a JSON payload.
    pub fn strings(v: &Value) -> Vec<&str> {
        match v {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().flat_map(strings).collect(),
            Value::Object(o) => o.values().flat_map(strings).collect(),
            _ => Vec::new(),
        }
    }

    /// Fails when any string of `payload` holds a terminal escape, a forged line or something
    /// a chat client would make a link of; `layout` newlines (the agent's own) are allowed.
    pub fn assert_inert(payload: &Value, layout_newlines: bool) {
        for s in strings(payload) {
            assert!(
                !s.chars()
                    .any(|c| c.is_control() && !(layout_newlines && c == '\n')),
                "control character in {s:?}"
            );
            for link in ["://evil", "](", "www.evil", "evil.example"] {
                assert!(!s.contains(link), "{link} in {s:?}");
            }
        }
        let all = strings(payload);
        assert!(
            all.iter().any(|s| s.contains(r"\x1b[31mx\ny")),
            "the name, shown escaped: {payload}"
        );
        assert!(
            all.iter()
                .any(|s| s.replace(super::ZWSP, "").contains("evil.example")),
            "the text is kept: {payload}"
        );
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn controls_become_visible_escapes() {
        assert_eq!(escape("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(escape("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(escape("nul\0del\x7f"), "nul\\x00del\\x7f");
        // C1 CSI (a one-character ESC [ for many terminals) and the bidi override.
        assert_eq!(escape("a\u{9b}2Jb"), "a\\u{9b}2Jb");
        assert_eq!(escape("evil\u{202e}txt.sh"), "evil\\u{202e}txt.sh");
        assert_eq!(escape("x\u{2028}y\u{2066}z"), "x\\u{2028}y\\u{2066}z");
    }

    #[test]
    fn ordinary_text_is_borrowed_untouched() {
        for text in [
            "/usr/bin/python3.11",
            "grep -E '\\d+' file",
            "naïve café — ⟵ 日本",
            "[x](http://evil.example)",
            "",
        ] {
            assert!(
                matches!(escape(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
        assert_eq!(printable_ascii(b"/usr/bin/x -y"), Some("/usr/bin/x -y"));
        assert_eq!(printable_ascii(b""), Some(""));
        assert_eq!(printable_ascii(b"a\tb"), None);
        assert_eq!(printable_ascii(b" ~"), Some(" ~"), "both ends of the range");
        assert_eq!(printable_ascii(b"x\x1f"), None);
        assert_eq!(printable_ascii(b"x\x7f"), None);
        assert_eq!(printable_ascii(&[b'a'; 100]), Some(&*"a".repeat(100)));
        let mut long = [b'a'; 100];
        long[97] = 0;
        assert_eq!(printable_ascii(&long), None, "a bad byte past the first 64");
        assert_eq!(printable_ascii("café".as_bytes()), None);
        assert_eq!(escaped("plain".to_string()), "plain");
        assert_eq!(escaped("a\nb".to_string()), "a\\nb");
    }

    #[test]
    fn links_are_broken_for_chat() {
        let text = defang(
            "see [x](http://evil.example) or https://evil.example/a <http://e|y> www.evil.example\n",
        );
        for link in ["](", "://", "www.", "evil.example"] {
            assert!(!text.contains(link), "{link} in {text}");
        }
        // Addresses and versions are left alone.
        assert_eq!(defang("198.51.100.2 python3.11"), "198.51.100.2 python3.11");
        assert!(!text.contains('\n'), "{text}");
        // What it says is kept, only made inert.
        assert_eq!(
            text.replace(ZWSP, ""),
            "see [x](http://evil.example) or https://evil.example/a <http://e|y> www.evil.example\\n"
        );
    }

    proptest! {
        /// Whatever a process calls itself: one line, no control character, nothing that
        /// reorders text, and escaping again changes nothing.
        #[test]
        fn any_text_escapes_to_one_inert_line(text in any::<String>()) {
            let once = escape(&text).into_owned();
            prop_assert!(!once.chars().any(is_hostile), "{:?}", once);
            prop_assert_eq!(escape(&once).into_owned(), once.clone());
            let chat = defang(&text);
            prop_assert!(!chat.chars().any(is_hostile));
            prop_assert!(!chat.contains("://") && !chat.contains("]("));
        }

        /// Bytes from the kernel read as the slow path (lossy decoding, then escaping) would.
        #[test]
        fn text_from_bytes_is_lossy_decoding_then_escaping(bytes in any::<Vec<u8>>()) {
            let want = escape(&String::from_utf8_lossy(&bytes)).into_owned();
            prop_assert_eq!(text_from(&bytes), want);
        }

        /// Escaping loses nothing printable: removing the escapes of a string that had no
        /// backslash gives it back.
        #[test]
        fn printable_text_survives(text in "[a-z/.\\[\\]():\n\x1b\t]{0,40}") {
            let once = escape(&text).into_owned();
            let back = once.replace("\\n", "\n").replace("\\t", "\t").replace("\\x1b", "\x1b");
            prop_assert_eq!(back, text);
        }
    }
}
