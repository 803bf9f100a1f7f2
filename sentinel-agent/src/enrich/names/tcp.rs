//! DNS answers over TCP that arrive in several segments, put back together. The kernel hands
//! the segment that starts a message and, as records of their own, the segments after it,
//! each piece with its socket (`flow`), its message (the sequence number of the message's
//! first byte) and its offset in the message (see `sentinel-common`'s `events::dns`). A
//! message whose first record holds all of it (nearly every answer: one segment on loopback
//! or with GRO) passes straight through; one that does not waits here until its bytes are
//! all in, then is parsed as any other.
//!
//! Hard bounds, whatever the resolver sends: at most [`MAX_WAITING`] messages wait at once
//! (the least recently fed goes first), each holds at most `DNS_PAYLOAD_MAX` bytes (a length
//! prefix claiming more is held to it: the message is then cut, as the kernel copies no
//! more), and a message still missing bytes [`MAX_WAIT_NS`] after its first piece (by the
//! records' own clock) is dropped. A piece of a message that is not waiting (its start was
//! never seen, or it was complete already) is dropped at once, so a flood of bogus pieces
//! costs a lookup each and no memory; out-of-order and overlapping pieces fill what is still
//! missing (the first bytes to arrive at an offset are kept), and bytes past the message's
//! end are ignored. Each piece costs work in proportion to its bytes, plus a look at the
//! waiting messages' ages: nothing here can grow or stall.
//!
//! Two messages back to back on one connection (pipelined answers) are two messages here
//! (their first sequence numbers differ), also when the second starts in the middle of the
//! segment that ends the first (the kernel looks for it there; see its `dns.rs`).

use std::borrow::Cow;

use hashlink::LruCache;
use sentinel_common::events::dns::DNS_PAYLOAD_MAX;

use crate::sensors::dns::Piece;

/// Most messages waiting for their later segments at once.
pub const MAX_WAITING: usize = 64;
/// How long a message waits for its missing bytes (record time, ns).
pub const MAX_WAIT_NS: u64 = 5_000_000_000;

/// What became of the messages handed in (for the debug log and the tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Put together from several pieces.
    pub joined: u64,
    /// Dropped still incomplete: too old, or pushed out by newer ones.
    pub expired: u64,
    pub evicted: u64,
    /// Pieces of no waiting message.
    pub stray: u64,
}

/// One message being put together.
struct Waiting {
    /// Its bytes so far (as long as the message, capped at `DNS_PAYLOAD_MAX`).
    bytes: Box<[u8]>,
    /// Which of them are in: one bit per byte.
    have: Box<[u64]>,
    /// How many are in.
    filled: usize,
    /// When its first piece came.
    since_ns: u64,
}

impl Waiting {
    fn new(len: usize, now_ns: u64) -> Self {
        Self {
            bytes: vec![0; len].into_boxed_slice(),
            have: vec![0; len.div_ceil(64)].into_boxed_slice(),
            filled: 0,
            since_ns: now_ns,
        }
    }

    /// Put `piece` at `offset`, keeping bytes already in; what lies past the end is ignored.
    fn fill(&mut self, offset: usize, piece: &[u8]) {
        let end = offset.saturating_add(piece.len()).min(self.bytes.len());
        for at in offset..end {
            let (word, bit) = (at / 64, 1u64 << (at % 64));
            if self.have[word] & bit == 0 {
                self.have[word] |= bit;
                self.bytes[at] = piece[at - offset];
                self.filled += 1;
            }
        }
    }

    fn complete(&self) -> bool {
        self.filled == self.bytes.len()
    }
}

/// The messages waiting for their later segments.
pub struct TcpMessages {
    waiting: LruCache<(u64, u32), Waiting>,
    counts: Counts,
}

impl Default for TcpMessages {
    fn default() -> Self {
        Self::new()
    }
}

impl TcpMessages {
    pub fn new() -> Self {
        Self {
            waiting: LruCache::new(MAX_WAITING),
            counts: Counts::default(),
        }
    }

    /// Take in `bytes`, the piece of a TCP message `piece` describes, received at `now_ns`:
    /// the whole message when it is complete now, else None (it waits, or the piece was
    /// dropped).
    pub fn take<'a>(
        &mut self,
        piece: &Piece,
        now_ns: u64,
        bytes: &'a [u8],
    ) -> Option<Cow<'a, [u8]>> {
        self.drop_old(now_ns);
        let len = usize::from(piece.wire_len).min(DNS_PAYLOAD_MAX);
        let key = (piece.flow, piece.msg_seq);
        let offset = piece.offset as usize;
        if offset == 0 && bytes.len() >= len {
            // All of it in one piece: the usual case, nothing kept.
            self.waiting.remove(&key);
            return Some(Cow::Borrowed(&bytes[..len]));
        }
        if !self.waiting.contains_key(&key) {
            // Only the message's first bytes open a wait: a later piece alone is dropped.
            if offset != 0 || len == 0 {
                self.counts.stray += 1;
                return None;
            }
            if self.waiting.len() >= MAX_WAITING {
                self.waiting.remove_lru();
                self.counts.evicted += 1;
            }
            self.waiting.insert(key, Waiting::new(len, now_ns));
        }
        let waiting = self.waiting.get_mut(&key)?;
        waiting.fill(offset, bytes);
        if !waiting.complete() {
            return None;
        }
        let done = self.waiting.remove(&key)?;
        self.counts.joined += 1;
        Some(Cow::Owned(done.bytes.into_vec()))
    }

    /// Drop the messages that waited too long.
    fn drop_old(&mut self, now_ns: u64) {
        let before = self.waiting.len();
        self.waiting
            .retain(|_, w| now_ns.saturating_sub(w.since_ns) < MAX_WAIT_NS);
        self.counts.expired += (before - self.waiting.len()) as u64;
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Messages waiting, and the bytes they hold.
    #[cfg(test)]
    pub fn held(&self) -> (usize, usize) {
        let bytes = self.waiting.iter().map(|(_, w)| w.bytes.len()).sum();
        (self.waiting.len(), bytes)
    }
}

#[cfg(test)]
mod tests;
