use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use mirage::cli::{bar, s, table, Api, CliError};
use serde_json::Value;

// Many small allocations freed on other threads (frames, envelopes, actor messages):
// mimalloc cut glibc malloc's share of the event path (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mirage --version`: the crate version and the commit it was built from (build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GIT_COMMIT"), ")");

/// Mirage: the fleet orchestrator, and the CLI that talks to it.
#[derive(Parser)]
#[command(name = "mirage", version = VERSION, about, propagate_version = true)]
struct Cli {
    /// Mirage HTTP API (for the client commands).
    #[arg(
        long,
        global = true,
        env = "MIRAGE_API",
        default_value = "http://127.0.0.1:7000"
    )]
    api: String,
    /// CA certificate (PEM) that an https:// API's certificate must chain to, e.g. the
    /// ca.pem of `mirage certs init` (default: the system roots).
    #[arg(long, global = true, env = "MIRAGE_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mirage, a co-located local Ghost, embedded storage and the dashboard, in one command.
    Up(UpArgs),
    /// Run Mirage: Ghost sessions, intents, locks, reports, the HTTP API.
    Serve(ServeArgs),
    /// Submit intents.
    Issue {
        #[command(subcommand)]
        cmd: IssueCmd,
    },
    /// List intents, newest first.
    Intents {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show or withdraw one intent.
    Intent {
        #[command(subcommand)]
        cmd: IntentCmd,
    },
    /// Show reports; `--follow` streams them live (and resumes across Mirage restarts).
    Reports {
        #[arg(long)]
        intent: Option<String>,
        #[arg(long)]
        follow: bool,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Connected and known Ghosts.
    Ghosts,
    /// One Ghost: `mirage ghost show ID` (its seeds and latest observations).
    Ghost {
        #[command(subcommand)]
        cmd: GhostCmd,
    },
    /// Seeds and the Ghosts that host them.
    Services,
    /// Seed locks; `mirage locks break KEY` breaks one.
    Locks {
        #[command(subcommand)]
        cmd: Option<LocksCmd>,
    },
    /// Actor mailbox metrics.
    Actors,
    /// Wire protocol tools for operators.
    Wire {
        #[command(subcommand)]
        cmd: WireCmd,
    },
    /// Certificates for TLS/mTLS.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Check this host's Mirage setup: config, certificates (expiry, chain, key modes),
    /// ports, the data directory. Prints each problem with its fix; exit code 1 when there
    /// is one.
    Doctor {
        #[arg(long, env = "MIRAGE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a shell completion script: `mirage completions bash > /etc/bash_completion.d/mirage`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (mirage.1 and one per subcommand) into a directory.
    Man {
        /// Output directory (created when missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create a fleet CA, a Mirage server certificate and one client certificate per Ghost
    /// (PEM; PKCS#8 keys, mode 0600), plus config snippets in config-snippets.toml.
    Init {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Name or IP the Ghosts dial Mirage by (repeat for several).
        #[arg(long = "mirage-host", required = true)]
        mirage_host: Vec<String>,
        /// A ghost_id to issue a client certificate for (repeat for several).
        #[arg(long = "ghost")]
        ghost: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Issue a client certificate for one more Ghost under the fleet CA kept by `init`
    /// (needs DIR/ca.key).
    AddGhost {
        /// The directory `init` wrote.
        #[arg(long, alias = "out")]
        dir: PathBuf,
        /// The new Ghost's ghost_id.
        ghost_id: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Issue a new certificate for a Ghost in place of DIR/<ghost_id>.pem/.key; the Ghost
    /// uses it from its next session (it re-reads its TLS files before each dial), so the
    /// current session is not interrupted. The previous certificate stays valid until
    /// revoked (`--revoke-old`, or later `mirage certs revoke --serial OLD`).
    Rotate {
        /// The directory `init` wrote.
        #[arg(long, alias = "out")]
        dir: PathBuf,
        /// The Ghost whose certificate is replaced.
        ghost_id: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Revoke the previous certificate now (its session goes on; its next handshake is
        /// refused). Use it when the Ghost reads these files in place or already has the copy.
        #[arg(long)]
        revoke_old: bool,
    },
    /// Revoke a Ghost's certificate: its serial goes into DIR/revoked.txt, which Mirage
    /// (tls.revoked_file) checks at every handshake.
    Revoke {
        /// The directory `init` wrote.
        #[arg(long, alias = "out")]
        dir: PathBuf,
        /// The Ghost whose certificate (DIR/<ghost_id>.pem) is revoked.
        ghost_id: String,
        /// Revoke this serial (hex) instead of DIR/<ghost_id>.pem's.
        #[arg(long)]
        serial: Option<String>,
    },
}

#[derive(Subcommand)]
enum IssueCmd {
    /// Submit a plan (TOML or JSON). With --wait, show progress and exit 0 when satisfied,
    /// 1 when failed.
    Submit {
        plan: PathBuf,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
enum IntentCmd {
    Show {
        id: String,
    },
    /// Cancel pending work and release its locks.
    Withdraw {
        id: String,
    },
    /// The stdout/stderr each command's seed.result carried (Mirage keeps the last 32
    /// commands of an intent, 4 KiB per stream).
    Logs {
        id: String,
        /// Only this step (1-based, as `intent show` numbers them).
        #[arg(long)]
        step: Option<u64>,
    },
}

#[derive(Subcommand)]
enum LocksCmd {
    Break { key: String },
}

#[derive(Subcommand)]
enum WireCmd {
    /// Decode a frame (or a stream of frames) or a handshake line and print it as JSON.
    ///
    /// Input may be hex text (whitespace ignored) or raw bytes. Prints one JSON document per
    /// frame or line; exit code 1 when anything fails to decode.
    Decode {
        /// Treat the input as NDJSON handshake lines (detected automatically when it starts
        /// with `{`).
        #[arg(long)]
        ndjson: bool,
        /// File to read; `-` or nothing reads standard input.
        file: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config (see config/mirage.toml); flags override it.
    #[arg(long, env = "MIRAGE_CONFIG")]
    config: Option<PathBuf>,
    /// Ghost session listener, ip:port.
    #[arg(long, env = "MIRAGE_LISTEN")]
    listen: Option<String>,
    /// HTTP API listener, ip:port ("" turns it off).
    #[arg(long = "http", env = "MIRAGE_HTTP")]
    http: Option<String>,
    /// Data directory (SQLite database).
    #[arg(long, env = "MIRAGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The co-located Ghost preferred by `on = "one"` steps.
    #[arg(long)]
    local_ghost: Option<String>,
}

#[derive(Args)]
struct UpArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// The `ghost` binary (default: next to this one).
    #[arg(long)]
    ghost_bin: Option<PathBuf>,
    /// Admin address of the local Ghost.
    #[arg(long, default_value = "127.0.0.1:7010")]
    ghost_admin: String,
    /// Ghost processes to run on this machine: the local one plus ghost.2, ghost.3, …
    #[arg(long, default_value_t = 1)]
    ghosts: usize,
}

fn config(a: &ServeArgs, up: bool) -> Result<mirage::config::MirageConfig, String> {
    let mut cfg = match a.config.as_ref() {
        Some(p) => mirage::config::MirageConfig::load(p)?,
        None => mirage::config::MirageConfig::default(),
    };
    if up && a.config.is_none() && a.data_dir.is_none() {
        cfg.data_dir = PathBuf::from("data/up");
    }
    if let Some(l) = &a.listen {
        cfg.listen = l.clone();
    }
    if let Some(l) = &a.http {
        cfg.api.listen = l.clone();
    }
    if let Some(d) = &a.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(g) = &a.local_ghost {
        cfg.local_ghost = g.clone();
    }
    if let Ok(t) = std::env::var("MIRAGE_TOKEN") {
        if !t.is_empty() {
            cfg.api.token = t;
        }
    }
    Ok(cfg)
}

fn exit(res: Result<i32, String>) -> ExitCode {
    match res {
        Ok(0) => ExitCode::SUCCESS,
        Ok(c) => ExitCode::from(c.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("mirage: {e}");
            ExitCode::from(2)
        }
    }
}

fn read_input(file: Option<&PathBuf>) -> std::io::Result<Vec<u8>> {
    // Bounded: a frame is at most 8 MiB of payload plus headers; hex doubles it.
    const MAX_INPUT: u64 = 20 * 1024 * 1024;
    let mut buf = Vec::new();
    match file {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::File::open(p)?
                .take(MAX_INPUT)
                .read_to_end(&mut buf)?;
        }
        _ => {
            std::io::stdin().take(MAX_INPUT).read_to_end(&mut buf)?;
        }
    }
    Ok(buf)
}

/// An API answer that is not 2xx becomes the error it carries.
fn ok(r: Result<(u16, Value), CliError>) -> Result<Value, CliError> {
    let (st, v) = r?;
    if (200..300).contains(&st) {
        Ok(v)
    } else {
        let message = v["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string());
        Err(CliError::Api {
            status: st,
            message,
        })
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn report_line(r: &Value) -> String {
    format!(
        "#{:<5} {:<11} {:<11} {}",
        s(&r["seq"]),
        s(&r["phase"]),
        s(&r["completion_state"]),
        s(&r["summary"])
    )
}

/// GET a JSON array and print it as an aligned table, or as JSON with `--json`.
fn list(
    api: &Api,
    json: bool,
    path: &str,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> Result<i32, CliError> {
    let v = ok(api.call("GET", path, None))?;
    print_list(v, json, headers, row)
}

/// Every page of `GET /v1/ghosts` (the server answers at most a page per call), in ghost_id
/// order.
fn all_ghosts(api: &Api) -> Result<Value, CliError> {
    const PAGE: usize = 1000;
    let mut all = Vec::new();
    let mut after = String::new();
    // Bounded: the registry itself is bounded; this stops a server that never ends a list.
    for _ in 0..10_000 {
        let path = if after.is_empty() {
            format!("/v1/ghosts?limit={PAGE}")
        } else {
            format!("/v1/ghosts?limit={PAGE}&after={}", query_escape(&after))
        };
        let v = ok(api.call("GET", &path, None))?;
        let page = v.as_array().cloned().unwrap_or_default();
        let n = page.len();
        match page.last().and_then(|g| g["ghost_id"].as_str()) {
            Some(last) if n >= PAGE && last != after => after = last.to_owned(),
            _ => after.clear(),
        }
        all.extend(page);
        if after.is_empty() {
            break;
        }
    }
    Ok(Value::Array(all))
}

/// Percent-encodes everything but RFC 3986 unreserved characters (ghost_ids may hold any
/// printable character).
fn query_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn print_list(
    v: Value,
    json: bool,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> Result<i32, CliError> {
    if json {
        print_json(&v);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| a.iter().map(&row).collect())
        .unwrap_or_default();
    print!("{}", table(headers, &rows));
    Ok(0)
}

fn client(cli: &Cli) -> Result<i32, CliError> {
    let api = Api::new(
        &cli.api,
        std::env::var("MIRAGE_TOKEN").ok(),
        cli.ca_file.as_deref(),
    )?;
    let json = cli.json;
    match &cli.cmd {
        Cmd::Issue {
            cmd: IssueCmd::Submit { plan, wait },
        } => {
            let body =
                std::fs::read(plan).map_err(|e| format!("cannot read {}: {e}", plan.display()))?;
            let v = ok(api.call("POST", "/v1/intents", Some(&body)))?;
            let id = s(&v["intent_id"]);
            if json && !wait {
                print_json(&v);
                return Ok(0);
            }
            if !json {
                println!(
                    "submitted {id}: {} step(s) over {}",
                    s(&v["steps_total"]),
                    s(&v["target_scope"])
                );
            }
            if !wait {
                return Ok(0);
            }
            let mut result = 1;
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
            api.follow(
                &format!("?intent={id}"),
                Some(0),
                |r| {
                    if json {
                        println!("{r}");
                    } else {
                        let done = r["steps_done"].as_u64().unwrap_or(0) as usize;
                        let total = r["steps_total"].as_u64().unwrap_or(1) as usize;
                        let line = format!("{} {}", bar(done, total, 20), s(&r["summary"]));
                        if tty {
                            print!("\r\x1b[2K{line}");
                            if r["phase"] == "complete" {
                                println!();
                            }
                        } else {
                            println!("{line}");
                        }
                        let _ = std::io::stdout().flush();
                    }
                    if r["phase"] == "complete" {
                        result = if r["completion_state"] == "satisfied" {
                            0
                        } else {
                            1
                        };
                        return false;
                    }
                    true
                },
                |why| eprintln!("mirage: {why}"),
            )?;
            Ok(result)
        }
        Cmd::Intents { limit } => list(
            &api,
            json,
            &format!("/v1/intents?limit={limit}"),
            &["INTENT", "STATUS", "STEPS", "ACTOR", "LAST REPORT"],
            |i| {
                vec![
                    s(&i["intent_id"]),
                    s(&i["status"]),
                    format!("{}/{}", s(&i["steps_done"]), s(&i["steps_total"])),
                    s(&i["actor"]),
                    s(&i["last_summary"]),
                ]
            },
        ),
        Cmd::Intent { cmd } => match cmd {
            IntentCmd::Show { id } => {
                let v = ok(api.call("GET", &format!("/v1/intents/{id}"), None))?;
                if json {
                    print_json(&v);
                    return Ok(0);
                }
                let sm = &v["summary"];
                println!("intent     {}", s(&sm["intent_id"]));
                println!("status     {}", s(&sm["status"]));
                println!("actor      {}", s(&sm["actor"]));
                println!("objective  {}", s(&sm["objective"]));
                println!("scope      {}", s(&sm["target_scope"]));
                println!(
                    "progress   {}",
                    bar(
                        sm["steps_done"].as_u64().unwrap_or(0) as usize,
                        sm["steps_total"].as_u64().unwrap_or(1) as usize,
                        20
                    )
                );
                let rows: Vec<Vec<String>> = v["plan"]["intent"]["steps"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                    .map(|(i, st)| {
                        vec![
                            (i + 1).to_string(),
                            s(&st["seed"]),
                            s(&st["operation"]),
                            serde_json::to_string(&st["on"]).unwrap_or_default(),
                            if st["blocking"] == true {
                                "yes".into()
                            } else {
                                "no".into()
                            },
                        ]
                    })
                    .collect();
                println!();
                print!(
                    "{}",
                    table(&["STEP", "SEED", "OPERATION", "ON", "BLOCKING"], &rows)
                );
                // storage.move: the target Ghost's latest transfer observation.
                for (ghost, key) in mirage::cli::move_targets(&v["plan"]) {
                    let g = api.call("GET", &format!("/v1/ghosts/{ghost}"), None);
                    if let Ok((200, g)) = g {
                        if let Some(l) = mirage::cli::move_line(&ghost, &key, &g["observed"][&key])
                        {
                            println!("{l}");
                        }
                    }
                }
                println!();
                for r in v["reports"].as_array().cloned().unwrap_or_default() {
                    println!("{}", report_line(&r));
                }
                let res = mirage::cli::result_lines(&v["plan"]);
                if !res.is_empty() {
                    println!();
                    for l in res {
                        println!("{l}");
                    }
                }
                let out = mirage::cli::output_lines(&v["plan"]);
                if !out.is_empty() {
                    println!();
                    for l in out {
                        println!("{l}");
                    }
                }
                Ok(0)
            }
            IntentCmd::Logs { id, step } => {
                let v = ok(api.call("GET", &format!("/v1/intents/{id}"), None))?;
                let mut plan = v["plan"].clone();
                if let (Some(n), Some(outs)) = (step, plan["outputs"].as_array_mut()) {
                    outs.retain(|o| o["step"].as_u64().map(|x| x + 1) == Some(*n));
                }
                if json {
                    print_json(&serde_json::json!({
                        "intent_id": id,
                        "outputs": plan["outputs"],
                        "outputs_dropped": plan["outputs_dropped"],
                    }));
                    return Ok(0);
                }
                let lines = mirage::cli::output_lines(&plan);
                if lines.is_empty() {
                    println!("no command output kept for {id}");
                }
                for l in lines {
                    println!("{l}");
                }
                Ok(0)
            }
            IntentCmd::Withdraw { id } => {
                let v = ok(api.call("DELETE", &format!("/v1/intents/{id}"), None))?;
                if json {
                    print_json(&v);
                } else {
                    match v["status"].as_str() {
                        Some("withdrawing") => println!(
                            "withdrawing {id}: its running command keeps the seed lock until it ends"
                        ),
                        _ => println!("withdrawn {id}"),
                    }
                }
                Ok(0)
            }
        },
        Cmd::Reports {
            intent,
            follow,
            limit,
        } => {
            let q = intent
                .as_ref()
                .map(|i| format!("intent={i}&"))
                .unwrap_or_default();
            if *follow {
                let last = {
                    // Following is `tail -F`-like: a Mirage that is restarting (or not up yet)
                    // is waited for; an HTTP refusal (bad token, bad query) is final.
                    let path = format!("/v1/reports?{q}limit={limit}");
                    let mut waited = false;
                    let v = loop {
                        match api.call("GET", &path, None) {
                            Ok(r) => break ok(Ok(r))?,
                            Err(e) => {
                                if !waited {
                                    eprintln!("mirage: {e}; waiting for it");
                                    waited = true;
                                }
                                std::thread::sleep(Duration::from_millis(300));
                            }
                        }
                    };
                    let arr = v.as_array().cloned().unwrap_or_default();
                    for r in &arr {
                        println!("{}", if json { r.to_string() } else { report_line(r) });
                    }
                    arr.last().and_then(|r| r["seq"].as_u64()).unwrap_or(0)
                };
                let query = intent
                    .as_ref()
                    .map(|i| format!("?intent={i}"))
                    .unwrap_or_default();
                api.follow(
                    &query,
                    Some(last),
                    |r| {
                        println!("{}", if json { r.to_string() } else { report_line(r) });
                        let _ = std::io::stdout().flush();
                        true
                    },
                    |why| eprintln!("mirage: {why}"),
                )?;
                return Ok(0);
            }
            let v = ok(api.call("GET", &format!("/v1/reports?{q}limit={limit}"), None))?;
            if json {
                print_json(&v);
            } else {
                for r in v.as_array().cloned().unwrap_or_default() {
                    println!("{}", report_line(&r));
                }
            }
            Ok(0)
        }
        Cmd::Ghosts => print_list(
            all_ghosts(&api)?,
            json,
            &["GHOST", "STATE", "KIND", "EVENTS", "SEEDS", "OBSERVED"],
            |g| {
                let seeds: Vec<String> = g["seeds"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|x| s(&x["id"]))
                    .collect();
                let kind = if g["local"] == true {
                    "local"
                } else if g["via_admin"].is_string() {
                    "admin"
                } else {
                    "-"
                };
                vec![
                    s(&g["ghost_id"]),
                    match (g["connected"] == true, g["conflict"].is_object()) {
                        (true, false) => "connected".into(),
                        (true, true) => "connected,conflict".into(),
                        (false, _) => "offline".into(),
                    },
                    kind.into(),
                    s(&g["events"]),
                    seeds.join(","),
                    observed_summary(&g["observed"]),
                ]
            },
        ),
        Cmd::Ghost {
            cmd: GhostCmd::Drain { id } | GhostCmd::Undrain { id },
        } => {
            let drain = matches!(
                cli.cmd,
                Cmd::Ghost {
                    cmd: GhostCmd::Drain { .. }
                }
            );
            let path = format!("/v1/ghosts/{}/drain", query_escape(id));
            let v = ok(api.call(if drain { "POST" } else { "DELETE" }, &path, None))?;
            if json {
                print_json(&v);
            } else if drain {
                println!(
                    "drained {id}: no new steps are placed on it; commands already sent run to their end{}",
                    if v["known"] == true { "" } else { " (not connected yet)" }
                );
            } else {
                println!("undrained {id}: steps may be placed on it again");
            }
            Ok(0)
        }
        Cmd::Ghost {
            cmd: GhostCmd::Show { id },
        } => {
            let v = ok(api.call("GET", &format!("/v1/ghosts/{}", query_escape(id)), None))?;
            if json {
                print_json(&v);
                return Ok(0);
            }
            println!(
                "{} {}{} seeds={}",
                s(&v["ghost_id"]),
                if v["connected"] == true {
                    "connected"
                } else {
                    "offline"
                },
                if v["drained"] == true { ",drained" } else { "" },
                v["seeds"]
                    .as_array()
                    .map(|a| a.iter().map(|x| s(&x["id"])).collect::<Vec<_>>().join(","))
                    .unwrap_or_default()
            );
            let mut rows = Vec::new();
            for (k, o) in v["observed"].as_object().cloned().unwrap_or_default() {
                let state: Vec<String> = o["state"]
                    .as_object()
                    .map(|m| m.iter().map(|(a, b)| format!("{a}={}", s(b))).collect())
                    .unwrap_or_default();
                rows.push(vec![k, s(&o["at_ms"]), state.join(" ")]);
            }
            print!("{}", table(&["OBSERVED", "AT_MS", "STATE"], &rows));
            Ok(0)
        }
        Cmd::Services => {
            let v = ok(api.call("GET", "/v1/services", None))?;
            if json {
                print_json(&v);
                return Ok(0);
            }
            let mut rows = Vec::new();
            for (seed, ghosts) in v.as_object().cloned().unwrap_or_default() {
                for g in ghosts.as_array().cloned().unwrap_or_default() {
                    rows.push(vec![
                        seed.clone(),
                        s(&g["ghost_id"]),
                        // Observed entrypoints (redis://…) when the seed advertises any.
                        match g["uris"].as_array().filter(|u| !u.is_empty()) {
                            Some(u) => u.iter().map(s).collect::<Vec<_>>().join(","),
                            None => s(&g["uri"]),
                        },
                        if g["connected"] == true {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        // The observed role (a raft-node member's leader/follower), if any.
                        g["observed"]
                            .as_object()
                            .map(|o| {
                                o.values()
                                    .filter_map(|x| x["state"]["role"].as_str())
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .filter(|r| !r.is_empty())
                            .unwrap_or_else(|| "-".into()),
                    ]);
                }
            }
            print!(
                "{}",
                table(&["SEED", "GHOST", "URI", "CONNECTED", "ROLE"], &rows)
            );
            Ok(0)
        }
        Cmd::Locks { cmd } => {
            if let Some(LocksCmd::Break { key }) = cmd {
                let v = ok(api.call("DELETE", &format!("/v1/locks/{key}"), None))?;
                if json {
                    print_json(&v);
                } else {
                    println!("broke lock {key}");
                }
                return Ok(0);
            }
            list(
                &api,
                json,
                "/v1/locks",
                &["KEY", "HOLDER", "TOKEN", "LAST TOKEN", "WAITING"],
                |l| {
                    let h = &l["holder"];
                    let holder = if h.is_null() {
                        "-".into()
                    } else {
                        format!(
                            "{} step {}",
                            s(&h["owner"]["intent_id"]),
                            h["owner"]["step"].as_u64().unwrap_or(0) + 1
                        )
                    };
                    let waiters: Vec<String> = l["waiters"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|w| s(&w[0]["intent_id"]))
                        .collect();
                    vec![
                        s(&l["key"]),
                        holder,
                        s(&h["token"]),
                        s(&l["last_token"]),
                        if waiters.is_empty() {
                            "-".into()
                        } else {
                            waiters.join(",")
                        },
                    ]
                },
            )
        }
        Cmd::Actors => list(
            &api,
            json,
            "/v1/actors",
            &[
                "ACTOR",
                "INSTANCES",
                "DEPTH",
                "PEAK",
                "SENT",
                "HANDLED",
                "MEAN µs",
            ],
            |a| {
                vec![
                    s(&a["actor"]),
                    s(&a["instances"]),
                    s(&a["mailbox_depth"]),
                    s(&a["mailbox_peak"]),
                    s(&a["sent"]),
                    s(&a["handled"]),
                    format!("{:.1}", a["handle_mean_us"].as_f64().unwrap_or(0.0)),
                ]
            },
        ),
        Cmd::Up(_)
        | Cmd::Serve(_)
        | Cmd::Wire { .. }
        | Cmd::Certs { .. }
        | Cmd::Completions { .. }
        | Cmd::Doctor { .. }
        | Cmd::Man { .. } => Ok(0),
    }
}

#[derive(Subcommand)]
enum GhostCmd {
    /// Registration, seeds and the latest observation per seed instance.
    Show { id: String },
    /// Place no new step on this Ghost (commands already sent run to their end). Kept in
    /// Mirage's data_dir/drained.txt, so it lasts across Mirage restarts until `undrain`.
    Drain { id: String },
    /// Let steps be placed on a drained Ghost again.
    Undrain { id: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::Serve(a) => {
            shared::init_tracing();
            exit(config(a, false).and_then(mirage::server::serve))
        }
        Cmd::Up(a) => {
            shared::init_tracing();
            let bin = a.ghost_bin.clone().or_else(|| {
                std::env::current_exe()
                    .ok()
                    .map(|p| p.with_file_name("ghost"))
            });
            let Some(bin) = bin else {
                return exit(Err(
                    "cannot locate the ghost binary; pass --ghost-bin".into()
                ));
            };
            let local = mirage::server::LocalGhost {
                bin,
                admin: a.ghost_admin.clone(),
                seeds: [
                    "seed.flow",
                    "seed.kv",
                    "seed.fs",
                    "seed.service",
                    "seed.redis",
                    "seed.kdht",
                    "raft-node",
                ]
                .map(String::from)
                .to_vec(),
                ghosts: a.ghosts,
            };
            exit(config(&a.serve, true).and_then(|c| mirage::server::serve_with(c, Some(local))))
        }
        Cmd::Wire {
            cmd: WireCmd::Decode { ndjson, file },
        } => {
            let input = match read_input(file.as_ref()) {
                Ok(b) => b,
                Err(e) => {
                    let name = file
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "stdin".into());
                    eprintln!("mirage wire decode: cannot read {name}: {e}");
                    return ExitCode::from(2);
                }
            };
            let (docs, ok) = mirage::wire_tool::decode(&input, *ndjson);
            let mut out = std::io::stdout().lock();
            for d in docs {
                let _ = writeln!(out, "{d}");
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Cmd::Certs {
            cmd:
                CertsCmd::Init {
                    out,
                    mirage_host,
                    ghost,
                    days,
                },
        } => exit(
            mirage::certs::init(out, mirage_host, ghost, *days).map(|files| {
                for f in files {
                    println!("wrote {}", f.display());
                }
                println!("keep ca.key secret (or move it offline): it issues Ghost identities");
                0
            }),
        ),
        Cmd::Certs {
            cmd:
                CertsCmd::AddGhost {
                    dir,
                    ghost_id,
                    days,
                },
        } => exit(
            mirage::certs::add_ghost(dir, ghost_id, *days).map(|(files, snippet)| {
                for f in files {
                    println!("wrote {}", f.display());
                }
                println!("{snippet}");
                0
            }),
        ),
        Cmd::Certs {
            cmd:
                CertsCmd::Rotate {
                    dir,
                    ghost_id,
                    days,
                    revoke_old,
                },
        } => exit(
            mirage::certs::rotate(dir, ghost_id, *days, *revoke_old).map(|r| {
                for f in &r.files {
                    println!("wrote {}", f.display());
                }
                for f in &r.kept {
                    println!("kept  {}", f.display());
                }
                println!(
                    "rotated {ghost_id}: serial {} replaces {}; the Ghost uses it from its next session",
                    r.new_serial, r.old_serial
                );
                if *revoke_old {
                    println!("revoked the previous serial {}", r.old_serial);
                } else {
                    println!(
                        "the previous certificate stays valid until: mirage certs revoke --dir {} {ghost_id} --serial {}",
                        dir.display(),
                        r.old_serial
                    );
                }
                0
            }),
        ),
        Cmd::Certs {
            cmd:
                CertsCmd::Revoke {
                    dir,
                    ghost_id,
                    serial,
                },
        } => exit(
            mirage::certs::revoke(dir, ghost_id, serial.as_deref()).map(|s| {
                println!(
                    "revoked {ghost_id}: serial {s} listed in {}",
                    dir.join(mirage::certs::REVOKED).display()
                );
                0
            }),
        ),
        Cmd::Doctor { config } => {
            let r = mirage::doctor::run(config.as_deref());
            ExitCode::from(r.print(&mut std::io::stdout()) as u8)
        }
        Cmd::Completions { shell } => {
            // Rendered first: clap_complete panics on a write error (a closed pipe).
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "mirage", &mut buf);
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &buf);
            ExitCode::SUCCESS
        }
        Cmd::Man { out } => exit(
            std::fs::create_dir_all(out)
                .and_then(|_| clap_mangen::generate_to(Cli::command(), out))
                .map(|_| {
                    println!("wrote man pages to {}", out.display());
                    0
                })
                .map_err(|e| format!("man pages into {}: {e}", out.display())),
        ),
        _ => match client(&cli) {
            Ok(c) => exit(Ok(c)),
            Err(e) => {
                eprintln!("mirage: {e}");
                ExitCode::from(e.exit_code())
            }
        },
    }
}

/// The `mirage ghosts` OBSERVED cell: the newest `state` per seed instance
/// (`seed.service/web=running`), at most three, then how many more; `-` when none.
fn observed_summary(observed: &serde_json::Value) -> String {
    let Some(m) = observed.as_object().filter(|m| !m.is_empty()) else {
        return "-".into();
    };
    let mut cells: Vec<String> = m
        .iter()
        .take(3)
        .map(|(k, o)| match o["state"]["state"].as_str() {
            Some(st) => format!("{k}={st}"),
            None => k.clone(),
        })
        .collect();
    if m.len() > 3 {
        cells.push(format!("+{}", m.len() - 3));
    }
    cells.join(",")
}
