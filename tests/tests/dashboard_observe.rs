//! Issue 11 item 2 (display): a Ghost's latest observations on the dashboard, in real headless
//! Chromium, and in the `mirage ghosts` table. A seed.chaos observation made after the page
//! loaded appears in the Observations table with its state, pid, URI and age; a newer one
//! replaces it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

fn exec(g: &Ghost, seed: &str, op: &str, args: Value) -> Value {
    g.admin(json!({"action": "execute", "command": {
        "seed_selector": seed, "operation": op, "args": args}}))
}

fn outcome(r: &Value) -> &str {
    r["data"]["event"]["Outcome"].as_str().unwrap_or("?")
}

fn mirage_cli(api: &str, args: &[&str]) -> String {
    let out = Command::new(bin("mirage"))
        .args(args)
        .env("MIRAGE_API", format!("http://{api}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "mirage {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dashboard_and_ghosts_table_show_the_latest_observation() {
    let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromedriver not installed: apt-get install chromium chromium-driver (.ci/run does this)");
    let dir = TempDir::new("dashboard-observe");
    let m = Mirage::start(&dir, 0, "");
    let g = Ghost::start(
        &dir,
        "g1",
        &m.session,
        "seeds = [\"seed.flow\", \"seed.chaos\"]",
    );
    m.wait_ghosts(1, T);
    let before = mirage_cli(&m.api, &["ghosts"]);
    assert!(
        before.lines().next().unwrap().contains("OBSERVED"),
        "{before}"
    );

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
        let deadline = Instant::now() + Duration::from_secs(30);
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
        "return !!document.querySelector('tr[data-ghost=\"g1\"]') && document.getElementById('observed').textContent.includes('no observation yet')",
        "the ghost without observations",
    );

    // Published after the page loaded: the dashboard's refresh must pick it up.
    let r = exec(
        &g,
        "seed.chaos",
        "observe",
        json!({"state": "running", "pid": "4242", "uri": "redis://127.0.0.1:6390/0"}),
    );
    assert_eq!(outcome(&r), "success", "{r}");
    let row = "document.querySelector('tr[data-observed=\"g1 seed.chaos\"]')";
    wait_js(
        &format!("const r = {row}; return !!r && r.querySelector('.state .pill').textContent === 'running' && r.querySelector('.state').textContent.includes('pid=4242') && r.querySelector('.uris').textContent === 'redis://127.0.0.1:6390/0' && / s$/.test(r.lastElementChild.textContent)"),
        "the observation with state, pid, URI and age",
    );
    let table = mirage_cli(&m.api, &["ghosts"]);
    assert!(table.contains("seed.chaos=running"), "{table}");

    // A newer observation replaces it, on the page and in the table.
    let r = exec(
        &g,
        "seed.chaos",
        "observe",
        json!({"state": "exited", "code": "9"}),
    );
    assert_eq!(outcome(&r), "success", "{r}");
    wait_js(
        &format!("const r = {row}; return !!r && r.querySelector('.state .pill').textContent === 'exited' && r.querySelector('.state').textContent.includes('code=9') && !r.querySelector('.state').textContent.includes('pid') && r.querySelector('.uris').textContent === '–'"),
        "the newer observation",
    );
    assert_eq!(
        js("return document.querySelectorAll('#observed tr[data-observed]').length"),
        json!(1),
        "one row per seed instance"
    );
    let table = mirage_cli(&m.api, &["ghosts"]);
    assert!(table.contains("seed.chaos=exited"), "{table}");
    let _ = http(&driver.addr, "DELETE", &s(""), None);
    eprintln!("dashboard observations: state, pid, URI and age shown; a newer one replaces it; `mirage ghosts` summary follows");
}
