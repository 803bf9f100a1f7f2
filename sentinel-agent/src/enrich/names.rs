//! Which name an address was resolved from. In: the DNS answers the `dns` sensor copies out of
//! the kernel as processes receive them (the agent never asks a resolver anything itself).
//! Out: for a connect, the name the connecting process — or, failing that, any process on the
//! host — most recently resolved to that address, with its CNAME chain.
//!
//! Answers are parsed with `simple-dns` (a dependency-free, borrowing parser: no allocation
//! per label, compression pointers bounded by its name-length check; see docs/architecture.md
//! for why not hickory-proto). Only what answers the question is believed: address records
//! whose owner is the question's name or a CNAME reached from it, never stray records a
//! forged or odd answer adds. Names are attacker-chosen text and are kept in a strict form:
//! lower-case letters, digits, `-`, `_` and `*` as they are, every other byte of a label as
//! `\xNN` (so no markup, space or control character ever leaves this module).
//!
//! The cache is bounded: [`CAPACITY`] addresses per host and as many (process, address)
//! pairs, least recently used evicted first, a process's pairs dropped after it exits (swept
//! at most once a minute, [`Names::sweep_exited`]), and every entry expires with its TTL, held at
//! least [`MIN_KEEP_S`] (a program may connect a little after a TTL-0 answer) and at most
//! [`MAX_KEEP_S`]. A message is at most 4 KiB and at most [`MAX_ADDRS`] of its records
//! are taken, so a flood of answers costs a bounded amount per answer and no memory beyond
//! the caps. A TCP answer that came in several segments is first put together in the
//! hard-bounded [`tcp::TcpMessages`] ([`Names::whole_message`]).

use std::{borrow::Cow, net::IpAddr, sync::Arc};

use hashlink::LruCache;
use simple_dns::{Name, Packet, PacketFlag, RCODE, rdata::RData};

use crate::sensors::dns::Dns;

pub mod tcp;

/// Most addresses (and, separately, process-address pairs) the cache holds.
pub const CAPACITY: usize = 16_384;
/// Shortest time a name is kept, whatever its TTL says.
pub const MIN_KEEP_S: u64 = 300;
/// Longest time a name is kept, whatever its TTL says.
pub const MAX_KEEP_S: u64 = 86_400;
/// Most address records taken from one answer.
pub const MAX_ADDRS: usize = 64;
/// Most CNAMEs followed from the question's name.
pub const MAX_CHAIN: usize = 8;
/// How often (at most, in answer time) the entries of processes that exited are dropped.
pub const SWEEP_EVERY_NS: u64 = 60 * 1_000_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("not a DNS message: {0}")]
    Malformed(String),
    #[error("a query, not an answer")]
    NotAnAnswer,
    #[error("the resolver answered {0}")]
    Failed(String),
    #[error("no question in the answer")]
    NoQuestion,
}

/// What one answer says: the name asked, the CNAMEs it led to, the addresses with TTLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub chain: Vec<String>,
    pub addrs: Vec<(IpAddr, u32)>,
}

/// Parse a DNS answer. Never panics and never loops on hostile input (the parser's own name
/// length limit stops compression-pointer loops; the chain walk is capped).
pub fn parse_answer(message: &[u8]) -> Result<Answer, NameError> {
    let packet = Packet::parse(message).map_err(|e| NameError::Malformed(e.to_string()))?;
    if !packet.has_flags(PacketFlag::RESPONSE) {
        return Err(NameError::NotAnAnswer);
    }
    let rcode = packet.rcode();
    if rcode != RCODE::NoError {
        return Err(NameError::Failed(format!("{rcode:?}")));
    }
    let question = packet.questions.first().ok_or(NameError::NoQuestion)?;
    let name = render(&question.qname);
    let mut chain: Vec<String> = Vec::new();
    let mut owner = name.clone();
    // Follow CNAMEs from the question: each step must start where the last one ended.
    while chain.len() < MAX_CHAIN {
        let next = packet.answers.iter().find_map(|rr| match &rr.rdata {
            RData::CNAME(target) if render(&rr.name) == owner => Some(render(&target.0)),
            _ => None,
        });
        match next {
            Some(target) if target != name && !chain.contains(&target) => {
                owner.clone_from(&target);
                chain.push(target);
            }
            _ => break,
        }
    }
    let answers_question = |owner: &str| owner == name || chain.iter().any(|c| c == owner);
    let addrs = packet
        .answers
        .iter()
        .filter_map(|rr| {
            let addr = match &rr.rdata {
                RData::A(a) => IpAddr::from(a.address.to_be_bytes()),
                RData::AAAA(a) => IpAddr::from(a.address.to_be_bytes()),
                _ => return None,
            };
            answers_question(&render(&rr.name)).then_some((addr, rr.ttl))
        })
        .take(MAX_ADDRS)
        .collect();
    Ok(Answer { name, chain, addrs })
}

/// A name in the strict form described in the module header, without the trailing dot.
fn render(name: &Name<'_>) -> String {
    let mut out = String::new();
    for (i, label) in name.as_bytes().enumerate() {
        if i > 0 {
            out.push('.');
        }
        for &b in label {
            let b = b.to_ascii_lowercase();
            if b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'*') {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out
}

/// A name an address was resolved from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub name: Arc<str>,
    /// The CNAMEs between the name asked and the address, in order.
    pub chain: Arc<[Arc<str>]>,
    /// When the entry stops counting (CLOCK_BOOTTIME ns, as the kernel's records).
    pub expires_ns: u64,
}

/// The bounded cache: per host and per (process, address).
pub struct Names {
    host: LruCache<IpAddr, Resolved>,
    procs: LruCache<(u32, IpAddr), Resolved>,
    /// When the per-process entries were last swept ([`Names::sweep_exited`]).
    swept_ns: u64,
    /// TCP answers waiting for their later segments.
    tcp: tcp::TcpMessages,
}

impl Default for Names {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl Names {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            host: LruCache::new(capacity.max(1)),
            procs: LruCache::new(capacity.max(1)),
            swept_ns: 0,
            tcp: tcp::TcpMessages::new(),
        }
    }

    /// The whole DNS message a record completes: its own bytes (UDP, or a TCP answer that
    /// came in one segment), else the TCP message it was the last missing piece of; None
    /// while the message waits for more (see [`tcp`]).
    pub fn whole_message<'d>(&mut self, d: &'d Dns) -> Option<Cow<'d, [u8]>> {
        match &d.stream {
            None => Some(Cow::Borrowed(&d.message)),
            Some(piece) => self.tcp.take(piece, d.ts_ns, &d.message),
        }
    }

    /// What became of the TCP answers that came in pieces.
    pub fn tcp_counts(&self) -> tcp::Counts {
        self.tcp.counts()
    }

    /// Drop the entries of processes that exited (`alive` says which still run) and every
    /// expired entry, at most once per [`SWEEP_EVERY_NS`] of `now_ns`: a process's names go
    /// with it (a later process given its pid does not inherit them) without a sweep per
    /// exit. Returns how many process entries went (None when it was not time yet).
    pub fn sweep_exited(&mut self, now_ns: u64, alive: impl Fn(u32) -> bool) -> Option<usize> {
        if now_ns < self.swept_ns.saturating_add(SWEEP_EVERY_NS) {
            return None;
        }
        self.swept_ns = now_ns;
        let before = self.procs.len();
        self.procs
            .retain(|(tgid, _), r| r.expires_ns > now_ns && alive(*tgid));
        self.host.retain(|_, r| r.expires_ns > now_ns);
        Some(before - self.procs.len())
    }

    /// Take in an answer process `tgid` (0: unknown) received at `ts_ns`: what it says.
    pub fn learn(&mut self, tgid: u32, ts_ns: u64, message: &[u8]) -> Result<Answer, NameError> {
        let answer = parse_answer(message)?;
        let name: Arc<str> = answer.name.as_str().into();
        let chain: Arc<[Arc<str>]> = answer.chain.iter().map(|c| Arc::from(c.as_str())).collect();
        for &(addr, ttl) in &answer.addrs {
            let keep_s = u64::from(ttl).clamp(MIN_KEEP_S, MAX_KEEP_S);
            let resolved = Resolved {
                name: name.clone(),
                chain: chain.clone(),
                expires_ns: ts_ns.saturating_add(keep_s * 1_000_000_000),
            };
            if tgid != 0 {
                self.procs.insert((tgid, addr), resolved.clone());
            }
            self.host.insert(addr, resolved);
        }
        Ok(answer)
    }

    /// The name `tgid` most recently resolved to `addr`, else the host's, if still fresh at
    /// `now_ns`.
    pub fn name_for(&mut self, tgid: u32, addr: IpAddr, now_ns: u64) -> Option<Resolved> {
        if let Some(r) = fresh(&mut self.procs, (tgid, addr), now_ns) {
            return Some(r);
        }
        fresh(&mut self.host, addr, now_ns)
    }

    /// Entries held (host, process-address pairs).
    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        (self.host.len(), self.procs.len())
    }
}

/// `detail` (an alert's line) with `addr` named: its first mention of the address becomes
/// `name (addr)`. Unchanged when it names `name` already or does not mention `addr`.
pub fn with_name(detail: &str, addr: IpAddr, name: &str) -> String {
    if detail.contains(name) {
        return detail.to_string();
    }
    // The address as a word: not the start of a longer one (198.51.100.2 in 198.51.100.23).
    let text = addr.to_string();
    let mut from = 0;
    while let Some(at) = detail[from..].find(&text).map(|i| i + from) {
        let end = at + text.len();
        let before = detail[..at].chars().next_back();
        let mut after = detail[end..].chars();
        let (next, then) = (after.next(), after.next());
        let part = |c: char| c.is_ascii_hexdigit() || c == ':';
        // A dot goes on an address only when a digit follows (a sentence may end with one).
        let dotted = |c: char| c == '.' && then.is_some_and(|d| d.is_ascii_hexdigit());
        let ends = next.is_none_or(|c| !part(c) && !dotted(c));
        let starts = before.is_none_or(|c| !part(c) && c != '.');
        if starts && ends {
            return format!("{}{name} ({text}){}", &detail[..at], &detail[end..]);
        }
        from = end;
    }
    detail.to_string()
}

/// The entry under `key` unless it expired (then it is dropped).
fn fresh<K: std::hash::Hash + Eq + Copy>(
    cache: &mut LruCache<K, Resolved>,
    key: K,
    now_ns: u64,
) -> Option<Resolved> {
    match cache.get(&key) {
        Some(r) if r.expires_ns > now_ns => Some(r.clone()),
        Some(_) => {
            cache.remove(&key);
            None
        }
        None => None,
    }
}

#[cfg(test)]
mod tests;
