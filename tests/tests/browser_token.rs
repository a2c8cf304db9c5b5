//! The dashboard with an API token in real headless Chromium (issue 19 item 12): opened as
//! `/?token=…` with characters that need percent-encoding, it authenticates its fetches and
//! its EventSource (the server percent-decodes `?token=`), and the token leaves the visible URL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::json;

struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn dashboard_with_a_token_goes_live_and_drops_the_token_from_its_url() {
    let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromedriver not installed: apt-get install chromium chromium-driver (.ci/run does this)");
    let dir = TempDir::new("browser-token");
    let token = "s3 +cr&et=%/?#x";
    let m = Mirage::start(&dir, 0, &format!("[api]\ntoken = \"{token}\""));
    let port = free_port();
    let _driver = Driver(
        Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = dir.path("chrome-profile");
    let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 format!("--user-data-dir={}", profile.display())]
    }}}});
    let session = wd(&addr, "POST", "/session", Some(caps));
    let sid = session["sessionId"].as_str().unwrap().to_owned();
    let s = |p: &str| format!("/session/{sid}{p}");
    let js = |script: &str| {
        wd(
            &addr,
            "POST",
            &s("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    };
    let wait_js = |script: &str, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if js(script) == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dashboard never showed {what}; url {}; page text: {}",
                js("return location.href"),
                js("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let _g = Ghost::start(&dir, "ghost.tok", &m.session, "");
    wd(
        &addr,
        "POST",
        &s("/url"),
        Some(json!({"url": format!("http://{}/?token={}", m.api, percent_encode(token))})),
    );
    // The report stream (token in its query) and the API calls (Bearer) are authorized.
    wait_js(
        "return document.getElementById('live').textContent === 'live'",
        "the live stream",
    );
    wait_js(
        "return !!document.querySelector('[data-ghost=\"ghost.tok\"]')",
        "the ghost",
    );
    let url = js("return location.href");
    assert!(
        !url.as_str().unwrap().contains("token"),
        "token still in the URL: {url}"
    );
    let _ = http(&addr, "DELETE", &s(""), None);
}
