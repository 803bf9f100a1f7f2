//! Forged, expired and malformed requests, unserved routes, and floods: none changes a decision.

use super::*;

#[tokio::test]
async fn forged_expired_and_malformed_links_change_nothing() {
    let e = endpoint().await;
    let deadline = SystemTime::now() + Duration::from_secs(300);
    let exp = expiry(deadline);
    let good = e.secret.sign("d1", Verdict::Safe, exp);
    let field = |id: &str, action: &str, exp: String, sig: &str| {
        vec![
            ("id".to_string(), id.to_string()),
            ("action".to_string(), action.to_string()),
            ("exp".to_string(), exp),
            ("sig".to_string(), sig.to_string()),
        ]
    };
    let mut tampered = good.clone().into_bytes();
    tampered[0] = if tampered[0] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    let past = now() - 5;
    let expired_sig = e.secret.sign("d1", Verdict::Safe, past);
    let cases = [
        (
            field("d1", "safe", exp.to_string(), &tampered),
            StatusCode::FORBIDDEN,
        ),
        (
            field("d2", "safe", exp.to_string(), &good),
            StatusCode::FORBIDDEN,
        ),
        (
            field("d1", "block", exp.to_string(), &good),
            StatusCode::FORBIDDEN,
        ),
        (
            field("d1", "safe", (exp + 3600).to_string(), &good),
            StatusCode::FORBIDDEN,
        ),
        (
            field("d1", "safe", past.to_string(), &expired_sig),
            StatusCode::GONE,
        ),
        (
            field("d1", "nuke", exp.to_string(), &good),
            StatusCode::BAD_REQUEST,
        ),
        (
            field("d1", "safe", "soon".into(), &good),
            StatusCode::BAD_REQUEST,
        ),
        (
            field("d 1", "safe", exp.to_string(), &good),
            StatusCode::BAD_REQUEST,
        ),
        (
            field("d1", "safe", exp.to_string(), "00"),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (fields, want) in &cases {
        let (status, body) = e.submit(fields).await;
        assert_eq!(status, *want, "{fields:?}: {body}");
        let query =
            reqwest::Url::parse_with_params(&format!("{}/v1/decide", e.base), fields).unwrap();
        let (status, body) = e.open(query.as_str()).await;
        assert_eq!(status, *want, "GET {fields:?}: {body}");
    }
    let (status, _) = e.open(&format!("{}/v1/decide?id=d1", e.base)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let r = e
        .http
        .post(format!("{}/v1/decide", e.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "id=d1&action=safe&exp={exp}&sig={good}&pad={}",
            "x".repeat(8192)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(e.switch.answers_seen().is_empty());
    assert_eq!(e.switch.state("d1"), State::Pending);
    // The untouched good link still works afterwards.
    let link = e.link("d1", Verdict::Safe, deadline);
    assert_eq!(e.press(&link).await.0, StatusCode::OK);
}

#[tokio::test]
async fn only_the_needed_routes_are_served() {
    let e = endpoint().await;
    assert_eq!(
        e.open(&format!("{}/healthz", e.base)).await.0,
        StatusCode::OK
    );
    for path in ["/", "/v1", "/v1/decisions", "/slack", "/etc/passwd"] {
        let (status, _) = e.open(&format!("{}{path}", e.base)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let r = e
        .http
        .delete(format!("{}/v1/decide", e.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = e
        .http
        .get(format!("{}/slack/actions", e.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn slack_route_is_absent_without_a_signing_secret() {
    let switch = FakeSwitch::start();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        &Config::default(),
        Arc::new(Secret::from_bytes(KEY)),
        switch.answers.clone(),
        outcome_message,
    ));
    let r = reqwest::Client::new()
        .post(format!("{base}/slack/actions"))
        .body("payload=%7B%7D")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn refusals_are_rate_limited_and_signed_links_still_work() {
    let e = endpoint().await;
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(e.open(&format!("{}/nowhere", e.base)).await.0);
    }
    assert!(
        statuses[..30].iter().all(|s| *s == StatusCode::NOT_FOUND),
        "{statuses:?}"
    );
    assert!(
        statuses[30..].contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // Answers that are not refused are never charged, however spent the budget is.
    for _ in 0..40 {
        let (status, _) = e.open(&format!("{}/healthz", e.base)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let link = e.link(
        "d1",
        Verdict::Safe,
        SystemTime::now() + Duration::from_secs(300),
    );
    let (status, page) = e.press(&link).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(e.switch.state("d1"), State::Safe);
}

/// A slow client: connects and sends a request one byte a second until the server hangs up
/// (true) or 30 bytes went out (false).
async fn slow_client(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let (mut read, mut write) = stream.into_split();
    let trickle = async move {
        for byte in b"GET /v1/decide?id=d1&action=safe HTTP/1.1\r\n" {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::future::pending::<()>().await;
    };
    let hang_up = async move {
        let mut buf = [0u8; 256];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        () = trickle => false,
        () = hang_up => true,
        () = tokio::time::sleep(Duration::from_secs(30)) => false,
    }
}

/// One garbage request: a forged link, a route that does not exist, or a forged Slack click.
async fn garbage(http: reqwest::Client, base: String, n: usize) -> Option<u16> {
    let request = match n % 3 {
        0 => http.post(format!("{base}/v1/decide")).form(&[
            ("id", "d1"),
            ("action", "block"),
            ("exp", "99999999999"),
            ("sig", &"ab".repeat(32)),
        ]),
        1 => http.get(format!("{base}/wp-login.php?n={n}")),
        _ => http
            .post(format!("{base}/slack/actions"))
            .header(
                "x-slack-request-timestamp",
                unix(SystemTime::now()).to_string(),
            )
            .header("x-slack-signature", format!("v0={}", "00".repeat(32)))
            .body(slack_body("block:d2", "http://127.0.0.1:9/")),
    };
    let response = request.timeout(Duration::from_secs(20)).send().await.ok()?;
    Some(response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_answer_lands_while_the_endpoint_is_flooded() {
    use std::sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    };
    // Everyone on one address, as behind a proxy: the per-address cap has its own test.
    let e = endpoint_with(Limits {
        header_timeout: Duration::from_secs(2),
        connection_timeout: Duration::from_secs(10),
        per_address: 1024,
        ..Limits::default()
    })
    .await;
    let addr: std::net::SocketAddr = e.base.trim_start_matches("http://").parse().unwrap();
    let slack = FakeApi::start(|_| (200, "ok".into())).await;

    // 100 slow connections, one byte a second each.
    let slow: Vec<_> = (0..100).map(|_| tokio::spawn(slow_client(addr))).collect();
    // 200 garbage requests a second from the same address as the admin, until the answers
    // landed (at most 30 s: 6,000 requests).
    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Arc<Mutex<HashMap<Option<u16>, usize>>> = Arc::default();
    let flood = {
        let (stop, statuses, base) = (stop.clone(), statuses.clone(), e.base.clone());
        let http = reqwest::Client::new();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut sent = Vec::new();
            for n in 0..6000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tick.tick().await;
                let (http, base, statuses) = (http.clone(), base.clone(), statuses.clone());
                sent.push(tokio::spawn(async move {
                    let status = garbage(http, base, n).await;
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                }));
            }
            for request in sent {
                request.await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The admin's signed link and Slack click land and end their decisions.
    let link = e.link(
        "d1",
        Verdict::Safe,
        SystemTime::now() + Duration::from_secs(300),
    );
    let (status, page) = e.press(&link).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let click = slack_body("block:d2", &format!("{}/r", slack.base));
    let (status, text) = e.slack(&click, now(), SLACK_SECRET).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(!flood.is_finished(), "the answers landed during the flood");
    stop.store(true, Ordering::Relaxed);
    flood.await.unwrap();

    assert_eq!(e.switch.state("d1"), State::Safe);
    assert_eq!(e.switch.state("d2"), State::Blocked);
    let statuses = statuses.lock().unwrap().clone();
    let refused: usize = [400, 401, 403, 404, 429]
        .iter()
        .map(|s| statuses.get(&Some(*s)).copied().unwrap_or(0))
        .sum();
    let total: usize = statuses.values().sum();
    assert!(total >= 500, "{statuses:?}");
    assert_eq!(
        refused, total,
        "every garbage request was refused: {statuses:?}"
    );
    assert!(
        statuses.get(&Some(429)).copied().unwrap_or(0) > total / 2,
        "past the budget refusals are quiet 429s: {statuses:?}"
    );
    // Garbage never reached the switch.
    let answers = e.switch.answers_seen();
    assert_eq!(answers.len(), 2, "{answers:?}");
    // The slow clients were cut off by the header timeout.
    let mut hung_up = 0;
    for client in slow {
        hung_up += usize::from(client.await.unwrap());
    }
    assert_eq!(
        hung_up, 100,
        "every slow connection was closed by the server"
    );
}

/// A TCP connection to `server` from `source` (any 127.0.0.0/8 address is loopback).
async fn connect_from(source: &str, server: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

/// Send `request` on `stream` and read the answer until the server closes (at most 10 s).
async fn exchange(mut stream: tokio::net::TcpStream, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_on_one_address_do_not_queue_another() {
    use tokio::io::AsyncReadExt;
    let e = endpoint_with(Limits {
        max_connections: 16,
        per_address: 8,
        ..Limits::default()
    })
    .await;
    let server: std::net::SocketAddr = e.base.trim_start_matches("http://").parse().unwrap();
    // 20 connections from one address that send nothing: enough to take every slot.
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(connect_from("127.0.0.2", server).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another address is answered at once, not after the slow ones' header timeout.
    let started = std::time::Instant::now();
    let admin = connect_from("127.0.0.3", server).await;
    let answer = exchange(admin, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered after {:?}",
        started.elapsed()
    );
    // The server closed what was over the cap; it holds the first 8.
    let mut closed = 0;
    for stream in &mut slow {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut byte));
        closed += usize::from(matches!(read.await, Ok(Ok(0) | Err(_))));
    }
    assert_eq!(
        closed, 12,
        "connections past the per-address cap are closed"
    );
}

#[tokio::test]
async fn a_trickled_body_is_cut_off_at_the_body_timeout() {
    let e = endpoint_with(Limits {
        body_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .await;
    let server: std::net::SocketAddr = e.base.trim_start_matches("http://").parse().unwrap();
    let started = std::time::Instant::now();
    let stream = connect_from("127.0.0.2", server).await;
    // Headers at once, then 3 bytes of the announced 200, then nothing.
    let answer = exchange(
        stream,
        "POST /v1/decide HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\nid=",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off after {:?}",
        started.elapsed()
    );
    assert!(e.switch.answers_seen().is_empty());
}
