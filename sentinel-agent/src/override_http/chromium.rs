//! Test support: a real headless Chromium (Debian's `chromium`, installed by
//! `scripts/setup.sh`) driven over the DevTools protocol, to test the confirmation page as a
//! browser shows it: open a page in a tab, read its text, press a button as a user would.
//! Each browser gets its own profile in a temp dir and is killed on drop.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

/// The Chromium binary, if installed.
pub fn binary() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A headless browser with its own profile.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    port: u16,
}

impl Browser {
    pub fn start(binary: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--metrics-recording-only",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // Chromium prints `DevTools listening on ws://127.0.0.1:PORT/...` when ready.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                    let port: u16 = rest.split('/').next().unwrap().parse().unwrap();
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium did not open its DevTools port within 60 s");
        Browser {
            child,
            _profile: profile,
            port,
        }
    }

    /// A new tab showing `url`, once it has loaded.
    pub fn open(&self, url: &str) -> Tab {
        // `PUT /json/new` opens a tab and describes it; the DevTools server keeps the
        // connection open, so read exactly Content-Length bytes of body.
        let mut http = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        http.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        // The reply's websocket URL is built from the Host header: give the port too.
        let request = format!(
            "PUT /json/new?about:blank HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        );
        http.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(http);
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("DevTools HTTP reply");
            let line = line.trim();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("DevTools HTTP body");
        let target: Value = serde_json::from_slice(&body).expect("a DevTools target");
        let ws = target["webSocketDebuggerUrl"].as_str().unwrap();
        let (socket, _) = tungstenite::connect(ws).expect("DevTools websocket");
        if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
            // A browser that stops answering fails the test instead of hanging it.
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
        }
        let mut tab = Tab { socket, next_id: 0 };
        tab.call("Page.enable", json!({}));
        tab.navigate(url);
        tab
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser tab.
pub struct Tab {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Tab {
    /// Send a DevTools command and wait for its result; events met meanwhile go to `seen`.
    fn call_seeing(&mut self, method: &str, params: Value, seen: &mut Vec<Value>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let text = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::text(text)).unwrap();
        loop {
            let message = self.socket.read().expect("DevTools message");
            let Ok(text) = message.to_text() else {
                continue;
            };
            let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if value["id"] == id {
                assert!(value["error"].is_null(), "{method}: {value}");
                return value["result"].clone();
            }
            seen.push(value);
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.call_seeing(method, params, &mut Vec::new())
    }

    /// Wait for the page's `load` event (already in `seen`, or yet to come).
    fn wait_loaded(&mut self, mut seen: Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if seen.iter().any(|e| e["method"] == "Page.loadEventFired") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page did not load within 30 s"
            );
            let message = self.socket.read().expect("DevTools message");
            if let Ok(text) = message.to_text() {
                seen.push(serde_json::from_str(text).unwrap_or(Value::Null));
            }
        }
    }

    pub fn navigate(&mut self, url: &str) {
        let mut seen = Vec::new();
        self.call_seeing("Page.navigate", json!({"url": url}), &mut seen);
        self.wait_loaded(seen);
    }

    /// Evaluate a JavaScript expression in the page (DevTools is not bound by the page's
    /// content security policy); its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        result["result"]["value"].clone()
    }

    /// The page's visible text.
    pub fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Press the button labelled `label` like a user: a trusted mouse click in its middle,
    /// then wait for the page it leads to.
    pub fn press(&mut self, label: &str) {
        let at = self.eval(&format!(
            "(() => {{ const b = [...document.querySelectorAll('button')]\
                .find(b => b.innerText.trim() === {label:?}); if (!b) return null;\
                const r = b.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (x, y) = match at.as_array() {
            Some(xy) => (xy[0].as_f64().unwrap(), xy[1].as_f64().unwrap()),
            None => panic!("no button {label:?} on the page: {}", self.text()),
        };
        let mut seen = Vec::new();
        for kind in ["mousePressed", "mouseReleased"] {
            self.call_seeing(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
                &mut seen,
            );
        }
        self.wait_loaded(seen);
    }
}
