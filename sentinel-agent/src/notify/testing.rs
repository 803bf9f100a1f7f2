//! Test doubles shared by the chat and override tests: a fake switch (the real one is tested
//! on its own) and a recording HTTP server standing in for a chat service.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    body::Bytes,
    extract::State as AxState,
    http::{StatusCode, Uri},
    response::IntoResponse,
};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{
    event::Mitre,
    switch::decision::{Answer, AnswerError, Decision, State, Verdict},
};

/// A pending geo decision `id` whose deadline is `left` from now.
pub fn decision(id: &str, left: Duration) -> Decision {
    let now = SystemTime::now();
    Decision {
        id: id.into(),
        anomaly: "geo".into(),
        severity: "critical".into(),
        risk: 92,
        mitre: Mitre {
            technique: "T1071.001".into(),
            tactic: "Command and Control".into(),
            name: "Web Protocols".into(),
        },
        host: "web-1".into(),
        pid: 4242,
        comm: "curl".into(),
        exe: Some("/usr/bin/curl".into()),
        ancestors: vec!["bash".into(), "node".into(), "systemd".into()],
        target_ip: Some("198.51.100.2".parse::<IpAddr>().unwrap()),
        targets: vec!["198.51.100.2".parse::<IpAddr>().unwrap()],
        refused: Vec::new(),
        overflow: 0,
        country: Some("RU".into()),
        domain: None,
        names: Default::default(),
        detail: "curl connected to 198.51.100.2:443 (RU)".into(),
        created: now,
        deadline: now + left,
        state: State::Pending,
        decided_by: None,
        reason: None,
        origin: None,
        waiting: None,
        container: None,
    }
}

/// Stands in for the switch: applies each answer to a pending decision exactly once.
pub struct FakeSwitch {
    pub answers: mpsc::Sender<Answer>,
    decisions: Arc<Mutex<HashMap<String, Decision>>>,
    seen: Arc<Mutex<Vec<(String, Verdict, String)>>>,
}

impl FakeSwitch {
    pub fn start() -> FakeSwitch {
        let (answers, mut rx) = mpsc::channel::<Answer>(16);
        let decisions: Arc<Mutex<HashMap<String, Decision>>> = Arc::default();
        let seen: Arc<Mutex<Vec<_>>> = Arc::default();
        let (d, s) = (decisions.clone(), seen.clone());
        tokio::spawn(async move {
            while let Some(a) = rx.recv().await {
                s.lock()
                    .unwrap()
                    .push((a.id.clone(), a.verdict, a.via.clone()));
                let mut all = d.lock().unwrap();
                let result = match all.get_mut(&a.id) {
                    None => Err(AnswerError::Unknown(a.id.clone())),
                    Some(d) if d.state != State::Pending => Err(AnswerError::Ended {
                        id: a.id.clone(),
                        state: d.state,
                    }),
                    Some(d) => {
                        d.state = match a.verdict {
                            Verdict::Safe => State::Safe,
                            Verdict::Block => State::Blocked,
                        };
                        d.decided_by = Some(a.via.clone());
                        Ok(d.clone())
                    }
                };
                let _ = a.reply.send(result);
            }
        });
        FakeSwitch {
            answers,
            decisions,
            seen,
        }
    }

    pub fn insert(&self, d: Decision) {
        self.decisions.lock().unwrap().insert(d.id.clone(), d);
    }

    pub fn get(&self, id: &str) -> Decision {
        self.decisions.lock().unwrap()[id].clone()
    }

    pub fn state(&self, id: &str) -> State {
        self.get(id).state
    }

    pub fn decided_by(&self, id: &str) -> Option<String> {
        self.get(id).decided_by
    }

    /// Every answer received: id, verdict, via.
    pub fn answers_seen(&self) -> Vec<(String, Verdict, String)> {
        self.seen.lock().unwrap().clone()
    }
}

/// A request the fake service received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {:?}", self.path, self.body))
    }
}

type Responder = Arc<dyn Fn(&Recorded) -> (u16, String, Duration) + Send + Sync>;

/// A real HTTP server on loopback that records every request and answers with the
/// responder's status and body.
pub struct FakeApi {
    pub base: String,
    log: Arc<Mutex<Vec<Recorded>>>,
}

#[derive(Clone)]
struct Fake {
    log: Arc<Mutex<Vec<Recorded>>>,
    respond: Responder,
}

async fn record(AxState(fake): AxState<Fake>, uri: Uri, body: Bytes) -> impl IntoResponse {
    let r = Recorded {
        path: uri.path().to_string(),
        body,
    };
    let (status, body, delay) = (fake.respond)(&r);
    fake.log.lock().unwrap().push(r);
    tokio::time::sleep(delay).await;
    (StatusCode::from_u16(status).unwrap(), body)
}

impl FakeApi {
    pub async fn start(
        respond: impl Fn(&Recorded) -> (u16, String) + Send + Sync + 'static,
    ) -> FakeApi {
        Self::start_with(move |r| {
            let (status, body) = respond(r);
            (status, body, Duration::ZERO)
        })
        .await
    }

    /// A fake whose answers may take a while: the responder also says how long.
    pub async fn start_with(
        respond: impl Fn(&Recorded) -> (u16, String, Duration) + Send + Sync + 'static,
    ) -> FakeApi {
        let log: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let fake = Fake {
            log: log.clone(),
            respond: Arc::new(respond),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(record).with_state(fake);
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeApi { base, log }
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// Requests to paths ending in `suffix`.
    pub fn to(&self, suffix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with(suffix))
            .collect()
    }

    /// Wait (up to 10 s) until at least `n` requests have arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        self.wait_until(|r| r.len() >= n).await
    }

    pub async fn wait_until(&self, done: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        for _ in 0..200 {
            let got = self.requests();
            if done(&got) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the fake service did not get what was expected: {:#?}",
            self.requests()
        );
    }
}
