//! bench-cost's DNS storm: N sequential queries from a connected UDP socket to a resolver of
//! the bench's own on a loopback address, each answered with one A record: N answers for the
//! `dns` sensor (its ingress program copies each one, the agent parses it and keeps the name).

use std::net::UdpSocket;

use super::*;

/// The bench's resolver: a loopback address of its own (all of 127/8 is loopback on Linux),
/// port 53, so the machine's own resolvers are never involved.
const RESOLVER: &str = "127.53.53.53:53";
/// The name asked, in wire form, with type A and class IN.
const QUESTION: &[u8] = b"\x05bench\x07example\x04test\x00\x00\x01\x00\x01";

/// N sequential query/answer exchanges with the bench's resolver.
pub(super) fn dns_storm(n: u64) -> anyhow::Result<Duration> {
    let server = UdpSocket::bind(RESOLVER)
        .with_context(|| format!("binding the bench resolver on {RESOLVER} (port 53 taken?)"))?;
    server.set_read_timeout(Some(Duration::from_secs(1)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let thread = thread::Builder::new()
        .name("bench-resolver".into())
        .spawn(move || answer_until(&server, &stopped))
        .context("starting the bench resolver")?;
    let client = UdpSocket::bind("127.0.0.1:0").context("binding the bench client")?;
    // Connected, as glibc's resolver does: the sensor learns the socket at connect().
    client
        .connect(RESOLVER)
        .context("connecting to the bench resolver")?;
    client.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 512];
    let start = Instant::now();
    let result = (|| {
        for i in 0..n {
            client.send(&query(i as u16))?;
            let len = client.recv(&mut buf)?;
            ensure!(
                len > 12 && buf[..2] == (i as u16).to_be_bytes(),
                "a wrong answer"
            );
        }
        Ok(start.elapsed())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = thread.join();
    result.with_context(|| format!("DNS storm of {n}"))
}

/// A query with id `id` for [`QUESTION`].
fn query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(QUESTION);
    q
}

/// The answer to `query`: the question, then one A record (a documentation address that
/// changes with the id) whose owner points at it.
fn answer(query: &[u8]) -> Vec<u8> {
    let mut a = query.to_vec();
    a[2] = 0x81;
    a[3] = 0x80;
    a[6..8].copy_from_slice(&1u16.to_be_bytes());
    a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 51, 100]);
    a.push(query[1]);
    a
}

fn answer_until(server: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((len, from)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&answer(&buf[..len]), from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_keeps_the_id_and_question_and_adds_one_record() {
        let q = query(0x1234);
        let a = answer(&q);
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(&a[12..12 + QUESTION.len()], QUESTION);
        assert_eq!(a.len(), q.len() + 16);
        assert_eq!(&a[a.len() - 4..], &[198, 51, 100, 0x34]);
    }
}
