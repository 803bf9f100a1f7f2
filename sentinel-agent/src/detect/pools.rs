//! Mining pools by name, for `miner`: a connection to an address resolved from a pool's name
//! (see `enrich/names.rs`) is a miner signal, whatever the port. `miner.pool_domains` lists
//! domains; each matches itself and every name below it (`supportxmr.com` matches
//! `pool.supportxmr.com`; a leading `*.` is accepted and means the same).
//!
//! The built-in list: well-known public pools of the coins cryptojacking mines (Monero above
//! all, as it is CPU-mined) and large multi-coin pools, each as its operator publishes it in
//! its connection instructions (the stratum host names miners are told to use; pools known to
//! have shut down are left out). It is written here, not vendored from a blocklist: a site
//! that wants more coverage sets `miner.pool_domains` from a maintained list of mining hosts
//! (CoinBlockerLists publishes one). Ordinary software never talks to these hosts; a site that
//! mines on purpose replaces the list or trusts its pools.

/// The pools matched when `miner.pool_domains` is not set.
pub const BUILT_IN: &[&str] = &[
    "2miners.com",
    "c3pool.com",
    "ethermine.org",
    "f2pool.com",
    "hashvault.pro",
    "herominers.com",
    "miningpoolhub.com",
    "monerohash.com",
    "moneroocean.stream",
    "nanopool.org",
    "nicehash.com",
    "supportxmr.com",
    "unmineable.com",
    "xmrpool.eu",
    "zpool.ca",
];

/// A pattern in the form matching uses: lower case, no `*.`, no trailing dot.
pub fn normalise(pattern: &str) -> String {
    pattern
        .trim()
        .trim_start_matches("*.")
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// Why `pattern` is not a usable domain, if it is not.
pub fn problem(pattern: &str) -> Option<String> {
    let p = normalise(pattern);
    if p.is_empty() || !p.contains('.') {
        return Some(format!(
            "{pattern:?} is not a domain (a name with a dot, e.g. supportxmr.com)"
        ));
    }
    if !p
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Some(format!(
            "{pattern:?}: only letters, digits, '-', '_' and '.' (a leading \"*.\" is allowed)"
        ));
    }
    None
}

/// The first of `patterns` (normalised) that covers `name` (as `enrich::names` renders it).
pub fn pool_of<'a>(patterns: &'a [String], name: &str) -> Option<&'a str> {
    patterns
        .iter()
        .find(|p| {
            name == p.as_str()
                || (name.len() > p.len()
                    && name.ends_with(p.as_str())
                    && name.as_bytes()[name.len() - p.len() - 1] == b'.')
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built_in() -> Vec<String> {
        BUILT_IN.iter().map(|p| normalise(p)).collect()
    }

    #[test]
    fn a_pool_matches_itself_and_the_names_below_it() {
        let pools = built_in();
        assert_eq!(
            pool_of(&pools, "pool.supportxmr.com"),
            Some("supportxmr.com")
        );
        assert_eq!(pool_of(&pools, "supportxmr.com"), Some("supportxmr.com"));
        assert_eq!(
            pool_of(&pools, "xmr-eu1.nanopool.org"),
            Some("nanopool.org")
        );
        assert_eq!(pool_of(&pools, "notsupportxmr.com"), None);
        assert_eq!(pool_of(&pools, "supportxmr.com.example.test"), None);
        assert_eq!(pool_of(&pools, "example.test"), None);
    }

    #[test]
    fn patterns_are_normalised_and_checked() {
        assert_eq!(normalise("*.Pool.Example.TEST."), "pool.example.test");
        for p in BUILT_IN {
            assert_eq!(problem(p), None, "{p}");
        }
        assert!(problem("").is_some());
        assert!(problem("localhost").is_some());
        assert!(problem("pool example.test").is_some());
        assert!(problem("pool.*.test").is_some());
    }
}
