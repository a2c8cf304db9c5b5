//! The `mirage` CLI's client side: talks to the HTTP API (`--api URL` / `MIRAGE_API`,
//! `MIRAGE_TOKEN`), prints aligned tables or `--json`, follows the report stream with resume.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use serde_json::Value;

/// Why a client command failed. The text is what the user sees (`mirage: {text}`), so the
/// variants only classify; the exit code is mapped here, in one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// The command line or environment is wrong (`--api`, `--ca-file`).
    #[error("{0}")]
    Usage(String),
    /// Mirage cannot be reached, or TLS with it failed.
    #[error("{0}")]
    Unreachable(String),
    /// The connection broke, or the answer was not HTTP.
    #[error("{0}")]
    Transport(String),
    /// Mirage answered with a status that is not 2xx.
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    /// The report stream answered a status other than 200.
    #[error("report stream answered {0}")]
    Stream(u16),
    /// Anything else a command reports, as it reports it.
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// The process exit code: every client error exits 2, as it always has (0 is success,
    /// 1 a command that ran and answered "no", e.g. a failed intent with `--wait`).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_)
            | CliError::Unreachable(_)
            | CliError::Transport(_)
            | CliError::Api { .. }
            | CliError::Stream(_)
            | CliError::Other(_) => 2,
        }
    }

    /// Retrying cannot help: a usage error, or a 4xx (bad token, unknown query).
    pub fn permanent(&self) -> bool {
        match self {
            CliError::Usage(_) => true,
            CliError::Api { status, .. } | CliError::Stream(status) => (400..500).contains(status),
            _ => false,
        }
    }
}

impl From<String> for CliError {
    fn from(s: String) -> CliError {
        CliError::Other(s)
    }
}

impl From<CliError> for String {
    fn from(e: CliError) -> String {
        e.to_string()
    }
}

/// A plain or TLS connection to the API.
trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

pub struct Api {
    host: String,
    token: Option<String>,
    /// Set for `https://`: verifies the server against the system roots or `--ca-file`.
    tls: Option<SslConnector>,
}

impl Api {
    /// `http://host:port` or `https://host:port` (a trailing path is ignored). For https the
    /// server certificate is verified against `ca_file` when given (the fleet CA from
    /// `mirage certs init`), else the system roots, and its name against the URL's host.
    pub fn new(url: &str, token: Option<String>, ca_file: Option<&Path>) -> Result<Api, CliError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(CliError::Usage(format!(
                "--api {url:?}: expected http://host:port or https://host:port"
            )));
        };
        let host = rest.split('/').next().unwrap_or("").to_owned();
        if host.is_empty() {
            return Err(CliError::Usage(format!("--api {url:?}: no host")));
        }
        let tls = if tls {
            let e = |x: openssl::error::ErrorStack| CliError::Other(format!("tls setup: {x}"));
            let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(e)?;
            if let Some(ca) = ca_file {
                b.set_ca_file(ca)
                    .map_err(|x| CliError::Usage(format!("--ca-file {}: {x}", ca.display())))?;
            }
            b.set_verify(SslVerifyMode::PEER);
            Some(b.build())
        } else {
            if ca_file.is_some() {
                return Err(CliError::Usage(format!(
                    "--ca-file is for https:// APIs; --api is {url:?}"
                )));
            }
            None
        };
        Ok(Api {
            host,
            token: token.filter(|t| !t.is_empty()),
            tls,
        })
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn connect(&self) -> Result<Box<dyn Conn>, CliError> {
        let s = TcpStream::connect(&self.host).map_err(|e| {
            CliError::Unreachable(format!(
                "cannot reach Mirage at {}://{} ({e}); is it running? (`make run`, or --api URL)",
                self.scheme(),
                self.host
            ))
        })?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
        let Some(tls) = &self.tls else {
            return Ok(Box::new(s));
        };
        // The name checked against the certificate: the host without its port (and without
        // the brackets of an IPv6 literal).
        let name = match self.host.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => self.host.as_str(),
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let s = tls.connect(name, s).map_err(|e| {
            CliError::Unreachable(format!(
                "TLS with Mirage at https://{} failed ({e}); pass the fleet CA with --ca-file (MIRAGE_CA_FILE)",
                self.host
            ))
        })?;
        Ok(Box::new(s))
    }

    fn head(&self, method: &str, path: &str, len: usize, extra: &[(&str, String)]) -> String {
        let mut h = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {len}\r\nUser-Agent: mirage-cli\r\n",
            self.host
        );
        if let Some(t) = &self.token {
            h.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in extra {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        h.push_str("\r\n");
        h
    }

    /// One request; the body parsed as JSON (or a JSON string when it is not JSON). A
    /// follower Mirage (store backend etcd) answers 307 naming the leader: the request goes
    /// once more, to the leader's API, with the same scheme and token.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Value), CliError> {
        let (status, v) = self.call_once(method, path, body)?;
        if status != 307 {
            return Ok((status, v));
        }
        match v["leader"]["api"]
            .as_str()
            .filter(|a| !a.is_empty() && *a != self.host)
        {
            Some(leader) => {
                let to = Api {
                    host: leader.to_owned(),
                    token: self.token.clone(),
                    tls: self.tls.clone(),
                };
                to.call_once(method, path, body)
            }
            None => Ok((status, v)),
        }
    }

    fn call_once(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Value), CliError> {
        let mut s = self.connect()?;
        let body = body.unwrap_or(&[]);
        s.write_all(self.head(method, path, body.len(), &[]).as_bytes())
            .and_then(|_| s.write_all(body))
            .map_err(|e| CliError::Transport(format!("request to {}: {e}", self.host)))?;
        let mut r = BufReader::new(s);
        let (status, chunked, len) = read_head(&mut r)?;
        let mut buf = Vec::new();
        if chunked {
            Chunked::new(r).take(64 << 20).read_to_end(&mut buf)
        } else if let Some(n) = len {
            r.take(n.min(64 << 20) as u64).read_to_end(&mut buf)
        } else {
            r.take(64 << 20).read_to_end(&mut buf)
        }
        .map_err(|e| CliError::Transport(format!("reading the answer: {e}")))?;
        let v = serde_json::from_slice(&buf)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&buf).into_owned()));
        Ok((status, v))
    }

    /// Follows `/v1/reports/stream`; calls `on` for each report until it returns false.
    /// Reconnects (with `Last-Event-ID`) when the stream drops, so nothing is missed while
    /// Mirage restarts.
    pub fn follow(
        &self,
        query: &str,
        mut last: Option<u64>,
        mut on: impl FnMut(&Value) -> bool,
        mut on_gap: impl FnMut(&str),
    ) -> Result<(), CliError> {
        let mut announced = false;
        loop {
            match self.follow_once(query, &mut last, &mut on) {
                Ok(true) => return Ok(()),
                // A 4xx (bad token, unknown query) will not heal by retrying.
                Err(e) if e.permanent() => return Err(e),
                Ok(false) | Err(_) => {
                    if !announced {
                        on_gap("stream interrupted; reconnecting");
                        announced = true;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
    }

    /// Ok(true): the callback asked to stop. Ok(false): the stream ended.
    fn follow_once(
        &self,
        query: &str,
        last: &mut Option<u64>,
        on: &mut impl FnMut(&Value) -> bool,
    ) -> Result<bool, CliError> {
        let mut s = self.connect()?;
        let mut extra = vec![("Accept", "text/event-stream".to_string())];
        let path = match last {
            Some(id) => {
                extra.push(("Last-Event-ID", id.to_string()));
                format!("/v1/reports/stream{query}")
            }
            None => format!("/v1/reports/stream{query}"),
        };
        s.write_all(self.head("GET", &path, 0, &extra).as_bytes())
            .map_err(|e| CliError::Transport(e.to_string()))?;
        let mut r = BufReader::new(s);
        let (status, chunked, _) = read_head(&mut r)?;
        if status != 200 {
            return Err(CliError::Stream(status));
        }
        let body: Box<dyn Read> = if chunked {
            Box::new(Chunked::new(r))
        } else {
            Box::new(r)
        };
        let mut lines = BufReader::new(body);
        let (mut event, mut data, mut id) = (String::new(), String::new(), None::<u64>);
        let mut line = String::new();
        loop {
            line.clear();
            let n = lines
                .read_line(&mut line)
                .map_err(|e| CliError::Transport(e.to_string()))?;
            if n == 0 {
                return Ok(false);
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if event == "report" {
                    if let Ok(v) = serde_json::from_str::<Value>(&data) {
                        if let Some(i) = id {
                            *last = Some(i);
                        }
                        if !on(&v) {
                            return Ok(true);
                        }
                    }
                } else if event == "gap" {
                    eprintln!("mirage: the stream skipped reports (consumer too slow): {data}");
                }
                event.clear();
                data.clear();
                id = None;
            } else if let Some(v) = l.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = l.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if let Some(v) = l.strip_prefix("id:") {
                id = v.trim().parse().ok();
            }
        }
    }
}

fn read_head(r: &mut impl BufRead) -> Result<(u16, bool, Option<usize>), CliError> {
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| CliError::Transport(format!("reading the answer: {e}")))?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CliError::Transport(format!("not an HTTP answer: {line:?}")))?;
    let (mut chunked, mut len) = (false, None);
    loop {
        line.clear();
        r.read_line(&mut line)
            .map_err(|e| CliError::Transport(e.to_string()))?;
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if l.starts_with("transfer-encoding:") && l.contains("chunked") {
            chunked = true;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().ok();
        }
    }
    Ok((status, chunked, len))
}

/// Decodes `Transfer-Encoding: chunked` as it arrives.
struct Chunked<R: BufRead> {
    r: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    fn new(r: R) -> Self {
        Chunked {
            r,
            left: 0,
            done: false,
        }
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut size = String::new();
            loop {
                size.clear();
                if self.r.read_line(&mut size)? == 0 {
                    self.done = true;
                    return Ok(0);
                }
                if !size.trim().is_empty() {
                    break;
                }
            }
            let hex = size.trim().split(';').next().unwrap_or("0");
            self.left = usize::from_str_radix(hex, 16).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size")
            })?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left);
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            self.done = true;
        }
        self.left -= n;
        if self.left == 0 {
            let mut crlf = String::new();
            let _ = self.r.read_line(&mut crlf);
        }
        Ok(n)
    }
}

/// Prints rows as columns aligned to the widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// `[####------] 2/5`
pub fn bar(done: usize, total: usize, width: usize) -> String {
    let total = total.max(1);
    let filled = (done.min(total) * width) / total;
    format!(
        "[{}{}] {done}/{total}",
        "#".repeat(filled),
        "-".repeat(width - filled)
    )
}

pub fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `intent show`'s output section: each kept command's stdout and stderr, lines indented
/// under a header naming the step, Ghost and command. Control characters are shown escaped
/// (a Ghost's output must not drive the user's terminal).
pub fn output_lines(plan: &Value) -> Vec<String> {
    let outs = plan["outputs"].as_array().cloned().unwrap_or_default();
    if outs.is_empty() {
        return vec![];
    }
    let mut lines = vec![format!(
        "output ({} command(s){}):",
        outs.len(),
        match plan["outputs_dropped"].as_u64().unwrap_or(0) {
            0 => String::new(),
            n => format!(", {n} older dropped"),
        }
    )];
    for o in &outs {
        let exit = o["exit_code"]
            .as_u64()
            .map(|c| format!(", exit {c}"))
            .unwrap_or_default();
        lines.push(format!(
            "  step {} on {} {} ({} {}{exit}):",
            o["step"].as_u64().unwrap_or(0) + 1,
            s(&o["ghost"]),
            s(&o["command_id"]),
            s(&o["operation"]),
            s(&o["outcome"]),
        ));
        for stream in ["stdout", "stderr"] {
            let text = o[stream].as_str().unwrap_or_default();
            if text.is_empty() {
                continue;
            }
            for l in text.lines() {
                let clean: String = l
                    .chars()
                    .flat_map(|c| match c {
                        '\t' => vec!['\t'],
                        c if c.is_control() => c.escape_default().collect(),
                        c => vec![c],
                    })
                    .collect();
                lines.push(format!("    {stream}| {clean}"));
            }
            let total = o[&format!("{stream}_bytes")].as_u64().unwrap_or(0);
            if total as usize > text.len() {
                lines.push(format!(
                    "    {stream}| … ({total} bytes, first {} kept)",
                    text.len()
                ));
            }
        }
    }
    lines
}

/// storage.move restore steps of a plan: (target Ghost, observation key of its transfer).
pub fn move_targets(plan: &Value) -> Vec<(String, String)> {
    plan["intent"]["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .filter(|st| st["seed"] == "seed.redis" && st["operation"] == "restore")
                .filter_map(|st| {
                    let ghost = st["on"]["ghost"].as_str()?;
                    let m = st["args"]["move"].as_str()?;
                    Some((ghost.to_owned(), format!("seed.redis/move.{m}")))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `transfer   ghost.2 move.x-0: transferring 1048576 of 5000000 bytes (12.5 MB/s)`.
pub fn move_line(ghost: &str, key: &str, obs: &Value) -> Option<String> {
    let st = obs.get("state")?;
    let f = |k: &str| st[k].as_str().unwrap_or("-").to_owned();
    let rate = st["rate_mb_s"]
        .as_str()
        .map(|r| format!(" ({r} MB/s)"))
        .unwrap_or_default();
    Some(format!(
        "transfer   {ghost} {}: {} {} of {} bytes{rate}",
        key.trim_start_matches("seed.redis/"),
        f("state"),
        f("bytes"),
        f("total")
    ))
}

/// `intent show`'s per-Ghost results: one line per step and Ghost.
pub fn result_lines(plan: &Value) -> Vec<String> {
    let rs = plan["results"].as_array().cloned().unwrap_or_default();
    if rs.is_empty() {
        return vec![];
    }
    let mut lines = vec!["results:".to_owned()];
    for r in &rs {
        let detail = r["detail"].as_str().filter(|d| !d.is_empty());
        lines.push(format!(
            "  step {} {} {}{}",
            r["step"].as_u64().unwrap_or(0) + 1,
            s(&r["ghost"]),
            s(&r["result"]),
            detail.map(|d| format!(": {d}")).unwrap_or_default()
        ));
    }
    if let Some(n) = plan["results_dropped"].as_u64().filter(|n| *n > 0) {
        lines.push(format!("  … {n} more not kept"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_read_as_before_and_classify_without_their_text() {
        let api = CliError::Api {
            status: 404,
            message: "no such intent".into(),
        };
        assert_eq!(api.to_string(), "404: no such intent");
        assert_eq!(
            CliError::Stream(401).to_string(),
            "report stream answered 401"
        );
        // Only a 4xx or a usage error is permanent; a 5xx or a broken link is retried.
        assert!(CliError::Stream(401).permanent());
        assert!(!CliError::Stream(503).permanent());
        assert!(!CliError::Transport("reading the answer: reset".into()).permanent());
        assert!(!CliError::Unreachable("cannot reach Mirage".into()).permanent());
        let bad = Api::new("ftp://x", None, None).err();
        assert!(matches!(bad, Some(CliError::Usage(_))), "{bad:?}");
        assert_eq!(
            bad.map(|e| e.to_string()).unwrap_or_default(),
            "--api \"ftp://x\": expected http://host:port or https://host:port"
        );
        assert_eq!(api.exit_code(), 2);
    }

    #[test]
    fn move_progress_is_read_from_the_target_observation() {
        let plan = serde_json::json!({"intent": {"steps": [
            {"seed": "seed.redis", "operation": "snapshot", "on": {"ghost": "a"}, "args": {"move": "m-0"}},
            {"seed": "seed.redis", "operation": "restore", "on": {"ghost": "b"}, "args": {"move": "m-0"}}]}});
        let t = move_targets(&plan);
        assert_eq!(t, [("b".to_owned(), "seed.redis/move.m-0".to_owned())]);
        let obs = serde_json::json!({"state": {"state": "transferring", "bytes": "10", "total": "20", "rate_mb_s": "1.5"}});
        assert_eq!(
            move_line("b", &t[0].1, &obs).unwrap(),
            "transfer   b move.m-0: transferring 10 of 20 bytes (1.5 MB/s)"
        );
        assert!(move_line("b", "k", &Value::Null).is_none());
    }

    #[test]
    fn result_lines_name_step_ghost_and_result() {
        let plan = serde_json::json!({"results": [{"step": 0, "ghost": "g2", "result": "offline_skipped"},
            {"step": 1, "ghost": "g1", "result": "failed", "detail": "boom"}]});
        assert_eq!(
            result_lines(&plan),
            [
                "results:",
                "  step 1 g2 offline_skipped",
                "  step 2 g1 failed: boom"
            ]
        );
    }

    #[test]
    fn output_lines_show_each_stream_escaped_and_cut() {
        let plan = serde_json::json!({"outputs": [{"step": 0, "ghost": "g1", "command_id": "cmd.x",
            "operation": "echo", "outcome": "success", "exit_code": 0,
            "stdout": "hi\n\u{1b}[2Jthere\n", "stderr": "", "stdout_bytes": 9000, "stderr_bytes": 0}],
            "outputs_dropped": 2});
        let l = output_lines(&plan);
        assert_eq!(l[0], "output (1 command(s), 2 older dropped):");
        assert_eq!(l[1], "  step 1 on g1 cmd.x (echo success, exit 0):");
        assert_eq!(l[2], "    stdout| hi");
        assert_eq!(l[3], "    stdout| \\u{1b}[2Jthere");
        assert!(l[4].contains("9000 bytes"), "{l:?}");
        assert!(output_lines(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn tables_align_and_bars_fill() {
        let t = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "w".into()]],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz    w\n");
        assert_eq!(bar(1, 4, 8), "[##------] 1/4");
        assert_eq!(bar(5, 4, 4), "[####] 5/4");
    }

    #[test]
    fn chunked_bodies_decode() {
        let raw = b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        let mut out = String::new();
        Chunked::new(&raw[..]).read_to_string(&mut out).unwrap();
        assert_eq!(out, "Wikipedia");
    }

    #[test]
    fn api_urls() {
        assert!(Api::new("http://127.0.0.1:7000", None, None).is_ok());
        assert!(Api::new("https://127.0.0.1:7000", None, None).is_ok());
        assert!(Api::new("ftp://x", None, None).is_err());
        assert!(Api::new("127.0.0.1:7000", None, None).is_err());
        assert!(Api::new("http://x:1", None, Some(Path::new("/ca.pem"))).is_err());
    }
}
