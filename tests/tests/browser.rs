//! The dashboard in real headless Chromium (Debian `chromium` + `chromium-driver`, installed
//! by .ci/run), driven over WebDriver: it shows a Ghost that connects and an intent's report
//! without a reload (issue 5, acceptance 3). The screenshot is kept in
//! target/test-artifacts/dashboard.png.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use e2e::*;
use serde_json::json;

#[test]
fn dashboard_shows_a_new_ghost_and_reports_live() {
    let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromedriver not installed: apt-get install chromium chromium-driver (.ci/run does this)");
    let dir = TempDir::new("browser");
    let m = Mirage::start(&dir, 0, "");

    let port = free_port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = WebDriver {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&driver.addr).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let profile = dir.path("chrome-profile");
    let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                 format!("--user-data-dir={}", profile.display())]
    }}}});
    let session = wd(&driver.addr, "POST", "/session", Some(caps));
    let sid = session["sessionId"].as_str().unwrap().to_owned();
    let s = |p: &str| format!("/session/{sid}{p}");
    let js = |script: &str| {
        wd(
            &driver.addr,
            "POST",
            &s("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    };
    let wait_js = |script: &str, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if js(script) == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dashboard never showed {what}; page text: {}",
                js("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    wd(
        &driver.addr,
        "POST",
        &s("/url"),
        Some(json!({"url": format!("http://{}/", m.api)})),
    );
    wait_js(
        "return document.getElementById('live').textContent === 'live'",
        "the live stream",
    );
    js("window.__loaded_once = true; return true");

    // After the page is up: a Ghost connects and an intent runs.
    let _g = Ghost::start(&dir, "ghost.web", &m.session, "");
    m.wait_ghosts(1, Duration::from_secs(20));
    let id = m.submit("intent_id=\"web\"\nactor=\"browser-test\"\ntarget_scope=\"ghost:*\"\nobjective=\"seen in the dashboard\"\n[[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\nargs={msg=\"hi\"}\n");
    m.wait_status(&id, "satisfied", Duration::from_secs(20));

    wait_js(
        "return !!document.querySelector('[data-ghost=\"ghost.web\"]')",
        "the ghost",
    );
    wait_js("return [...document.querySelectorAll('.report[data-intent=\"web\"]')].some(d => d.textContent.includes('satisfied'))", "the satisfied report");
    wait_js("return !!document.querySelector('[data-intent=\"web\"]') && document.querySelector('tr[data-intent=\"web\"]').textContent.includes('1/1')", "the intent's progress");
    wait_js(
        "return document.querySelectorAll('#actors canvas').length >= 3",
        "actor mailbox charts",
    );
    assert_eq!(
        js("return window.__loaded_once === true"),
        json!(true),
        "the page was not reloaded"
    );

    let png_b64 = wd(&driver.addr, "GET", &s("/screenshot"), None);
    let png = base64::engine::general_purpose::STANDARD
        .decode(png_b64.as_str().unwrap())
        .unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let out = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/test-artifacts"
    ));
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("dashboard.png"), &png).unwrap();
    eprintln!(
        "screenshot: {} ({} bytes)",
        out.join("dashboard.png").display(),
        png.len()
    );
    let _ = http(&driver.addr, "DELETE", &s(""), None);
}
