//! The dashboard's intent detail view in real headless Chromium (issue 23 items 3 and 7):
//! clicking an intent shows why it failed in full and its commands' output; the filters
//! narrow the list; the withdraw button withdraws.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::*;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[test]
fn intent_detail_shows_failure_and_output_filters_and_withdraws() {
    let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromedriver not installed: apt-get install chromium chromium-driver (.ci/run does this)");
    let dir = TempDir::new("dashboard-detail");
    let m = Mirage::start(&dir, 0, "");
    // The long sleep must outlast the whole browser session however slow the machine is
    // (it is withdrawn at the end): 20 s once ran out under a loaded CI.
    let _g = Ghost::start(
        &dir,
        "g1",
        &m.session,
        "[seed]\nflow_max_sleep_ms = 900000\n",
    );
    m.wait_ghosts(1, T);
    let head = |id: &str| {
        format!("intent_id=\"{id}\"\nactor=\"t\"\ntarget_scope=\"ghost:g1\"\nobjective=\"objective of {id}\"\n")
    };
    let ok = m.submit(&format!(
        "{}[[step]]\nseed=\"seed.flow\"\noperation=\"echo\"\nargs={{msg=\"shown-in-dashboard\"}}\n",
        head("ok")
    ));
    let bad = m.submit(&format!(
        "{}[[step]]\nseed=\"seed.flow\"\noperation=\"fail\"\nargs={{code=\"4\",message=\"the disk is on fire and this sentence is long enough to be cut off in a table cell\"}}\n",
        head("bad")
    ));
    let long = m.submit(&format!(
        "{}[[step]]\nseed=\"seed.flow\"\noperation=\"sleep\"\nargs={{ms=\"600000\"}}\ntimeout=\"15m\"\n",
        head("long")
    ));
    m.wait_status(&ok, "satisfied", T);
    m.wait_status(&bad, "failed", T);

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
        "return !!document.querySelector('tr[data-intent=\"ok\"]')",
        "the intents",
    );

    js("document.querySelector('tr[data-intent=\"ok\"]').click(); return true");
    wait_js("return !document.getElementById('detail').hidden && [...document.querySelectorAll('#detail pre.stdout')].some(p => p.textContent.includes('flow echo: msg=shown-in-dashboard'))", "the command's output");

    js("document.querySelector('tr[data-intent=\"bad\"]').click(); return true");
    wait_js("return document.getElementById('d-id').textContent === 'bad' && document.querySelector('#detail .why').textContent.includes('long enough to be cut off in a table cell')", "the full failure");
    wait_js("return [...document.querySelectorAll('#detail pre.stderr')].some(p => p.textContent.includes('disk is on fire'))", "the failure's stderr");
    assert_eq!(
        js("return document.getElementById('d-withdraw').hidden"),
        json!(true),
        "no withdraw button on a failed intent"
    );

    js("const f = document.getElementById('f-status'); f.value = 'failed'; f.dispatchEvent(new Event('change')); return true");
    wait_js("return document.querySelectorAll('#intents tr[data-intent]').length === 1 && !!document.querySelector('tr[data-intent=\"bad\"]')", "only the failed intent");
    js("const f = document.getElementById('f-status'); f.value = ''; f.dispatchEvent(new Event('change')); const t = document.getElementById('f-text'); t.value = 'objective of long'; t.dispatchEvent(new Event('input')); return true");
    wait_js("return document.querySelectorAll('#intents tr[data-intent]').length === 1 && !!document.querySelector('tr[data-intent=\"long\"]')", "the text filter");

    js("document.querySelector('tr[data-intent=\"long\"]').click(); return true");
    wait_js("return document.getElementById('d-id').textContent === 'long' && !document.getElementById('d-withdraw').hidden", "the withdraw button");
    js("window.confirm = () => true; document.getElementById('d-withdraw').click(); return true");
    m.wait_status(&long, "withdrawn", T);
    wait_js(
        "return document.querySelector('#detail .pill').textContent === 'withdrawn'",
        "the withdrawn status",
    );
    let _ = http(&driver.addr, "DELETE", &s(""), None);
    eprintln!("dashboard detail: output, full failure, status and text filters, withdraw button");
}
