//! DNS over TCP for the `dns` sensor (see its module header): the messages a segment from
//! port 53 holds, the rest of the one its socket is receiving and the starts of the next,
//! and what the socket's storage remembers of the message in progress.

use aya_ebpf::{EbpfContext, helpers::generated::bpf_get_socket_cookie, programs::SkBuffContext};
use sentinel_common::events::dns::{DNS_PART, DNS_START, DNS_TCP, DnsAsker, may_name, piece_of};

use super::{Found, FromPort53, asker_of, emit};

/// TCP DNS messages start with their length.
const TCP_LEN_PREFIX: u32 = 2;
/// What a segment must hold of a message to be seen starting it: the length prefix and the
/// DNS header's first 8 bytes (flags and counts, for `may_name`).
const TCP_START_MIN: u32 = TCP_LEN_PREFIX + 8;
/// Most messages one TCP segment is searched for: the rest of one and the starts of the
/// next ones (pipelined answers, coalesced by Nagle).
const TCP_MESSAGES_PER_SEGMENT: usize = 3;

/// A TCP segment from port 53 to a socket that asked: the messages it holds, in order — the
/// rest of the one the socket is receiving, then messages that start in it (pipelined
/// answers), at most [`TCP_MESSAGES_PER_SEGMENT`]. A segment with no payload (a bare ACK)
/// costs no map lookup.
#[inline(always)]
pub(super) fn on_tcp(ctx: &SkBuffContext, from: &FromPort53) {
    // Sequence number (4 bytes at 4), acknowledgement, data offset (the byte at 12).
    let Ok(head) = ctx.load::<[u8; 9]>(from.l4 as usize + 4) else {
        return;
    };
    let seq = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let payload_at = from.l4 + ((head[8] >> 4) as u32) * 4;
    let Some(payload) = ctx.len().checked_sub(payload_at) else {
        return;
    };
    if payload == 0 {
        return;
    }
    let Some(entry) = asker_of(ctx) else {
        return;
    };
    // The connection's records are put together by its cookie. SAFETY: the helper takes this
    // program's context (the receiving socket's cookie).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let segment = Segment {
        seq,
        payload_at,
        payload,
        cookie,
    };
    // Where in the payload the next message's bytes start.
    let mut cursor = 0;
    for _ in 0..TCP_MESSAGES_PER_SEGMENT {
        let Some(found) = locate_tcp(ctx, from, &segment, entry, cursor) else {
            return;
        };
        if found.copy {
            // SAFETY: a storage value, valid for this program's run; copied out at once.
            let asker = unsafe { *entry };
            emit(ctx, &found, &asker);
        }
        // The next message starts where this one ends, if in this segment with room for its
        // length prefix at least.
        let end = found.msg_seq.wrapping_add(found.wire_len).wrapping_sub(seq) as i32;
        if end <= cursor as i32 || end as u32 + TCP_LEN_PREFIX > payload {
            return;
        }
        cursor = end as u32;
    }
}

/// A TCP segment with payload, to a socket that asked.
struct Segment {
    seq: u32,
    /// Offset of the payload from the network header, and its length.
    payload_at: u32,
    payload: u32,
    cookie: u64,
}

/// What a TCP segment holds of a DNS answer from `cursor` (an offset in its payload) on: the
/// rest of the message whose start the socket's entry remembers (a later segment of it, or a
/// retransmission), else the start of a message — remembered, for the segments after it,
/// when it can name something; else only its length is given (`copy` false), so the next
/// message can be found behind it.
#[inline(always)]
fn locate_tcp(
    ctx: &SkBuffContext,
    from: &FromPort53,
    segment: &Segment,
    entry: *mut DnsAsker,
    cursor: u32,
) -> Option<Found> {
    // SAFETY: a storage value, valid for this program's run; copied out at once.
    let asker = unsafe { *entry };
    let seq = segment.seq.wrapping_add(cursor);
    let left = segment.payload.checked_sub(cursor)?;
    let at = segment.payload_at + cursor;
    let mut found = Found {
        family: from.family,
        protocol: DNS_TCP,
        part: DNS_PART,
        server: from.server,
        at,
        here: 0,
        wire_len: asker.wire_len as u32,
        flow: segment.cookie,
        msg_seq: asker.msg_seq,
        offset: 0,
        copy: true,
    };
    if asker.wire_len != 0
        && let Some((skip, offset, len)) = piece_of(seq, left, asker.msg_seq, asker.wire_len)
    {
        found.at += skip;
        found.offset = offset;
        found.here = len;
        return Some(found);
    }
    if left == TCP_LEN_PREFIX {
        // Only a length prefix, as some servers send it (a write of its own): the message is
        // remembered unchecked (its header comes in the next segment, copied as its piece at
        // offset 0; the agent's parser judges it).
        let prefix: [u8; 2] = ctx.load(at as usize).ok()?;
        let wire_len = u16::from_be_bytes(prefix);
        let msg_seq = seq.wrapping_add(TCP_LEN_PREFIX);
        // SAFETY: as above.
        unsafe {
            (*entry).msg_seq = msg_seq;
            (*entry).wire_len = wire_len;
        }
        found.copy = false;
        found.wire_len = wire_len as u32;
        found.msg_seq = msg_seq;
        return Some(found);
    }
    // A message starts here: its length prefix and the DNS header's first 8 bytes in one
    // read (a segment that does not start a message fails it or the checks below).
    let start: [u8; TCP_START_MIN as usize] = ctx.load(at as usize).ok()?;
    let wire_len = u16::from_be_bytes([start[0], start[1]]);
    let head = [
        start[2], start[3], start[4], start[5], start[6], start[7], start[8], start[9],
    ];
    let msg_seq = seq.wrapping_add(TCP_LEN_PREFIX);
    // A DNS header is 12 bytes; what this segment holds of the message.
    let here = (left - TCP_LEN_PREFIX).min(wire_len as u32);
    if !may_name(head) || here < 12 {
        // Nothing to copy, but the next message may follow it in this segment.
        found.copy = false;
        found.wire_len = wire_len as u32;
        found.msg_seq = msg_seq;
        return Some(found);
    }
    // The segments after this one are known by this. SAFETY: as above; a plain store (a
    // racing segment of the same socket can only garble this socket's own state).
    unsafe {
        (*entry).msg_seq = msg_seq;
        (*entry).wire_len = wire_len;
    }
    found.part = DNS_START;
    found.at = at + TCP_LEN_PREFIX;
    found.here = here;
    found.wire_len = wire_len as u32;
    found.msg_seq = msg_seq;
    Some(found)
}
