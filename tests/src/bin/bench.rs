//! `bench`: the performance scenarios of BENCHMARKS.md, run against real `mirage` and `ghost`
//! binaries of the same profile (build with `--release`). Each scenario prints one JSON line
//! and, unless `--no-append`, appends it to BENCHMARKS.md with the exact command.
//!
//!   cargo run --release -p e2e --bin bench -- loop --intents 50000 --concurrency 32
//!   cargo run --release -p e2e --bin bench -- --help
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use e2e::*;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "bench",
    about = "Mirage/Ghost performance scenarios; one JSON line each, appended to BENCHMARKS.md"
)]
struct Cli {
    /// Print only; do not append to the benchmarks file (smoke runs).
    #[arg(long, global = true)]
    no_append: bool,
    /// Mirage on `[store] backend = "etcd"` over a 3-member etcd on loopback (started
    /// and stopped by the bench) instead of SQLite.
    #[arg(long, global = true)]
    etcd: bool,
    /// The markdown file results are appended to.
    #[arg(long, global = true, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Clone)]
enum Scenario {
    /// One-step intents through the API to swarm Ghosts; intents/s and submit→finished
    /// latency. Closed loop (each client waits for its intent) unless --rate is given.
    Loop {
        #[arg(long, default_value_t = 20_000)]
        intents: u64,
        /// Concurrent API clients.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Swarm Ghosts the intents are spread over.
        #[arg(long, default_value_t = 4)]
        ghosts: usize,
        /// Offered load in intents/s (open loop, latency counted from the scheduled time).
        #[arg(long)]
        rate: Option<f64>,
        /// Real `ghost serve` processes (durable outbox, default logging) instead of the
        /// swarm, one per --ghosts; `swarm_cpu_us_per_intent` is then their CPU.
        #[arg(long)]
        real: bool,
        /// With --real: log every hop of every intent (`hop=debug` on both sides) and print
        /// the median time of each hop (`hops`). The logging itself adds a little per hop.
        #[arg(long)]
        trace: bool,
    },
    /// `loop --real`: one-step intents through N real `ghost serve` processes.
    #[command(name = "loop-real")]
    LoopReal {
        #[arg(long, default_value_t = 20_000)]
        intents: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 1)]
        ghosts: usize,
        #[arg(long)]
        rate: Option<f64>,
        /// As `loop --real --trace`.
        #[arg(long)]
        trace: bool,
    },
    /// RSS of one real `ghost serve`: idle, then while N commands go through it (one-step
    /// intents, 16 clients), sampled ten times (flat is the goal).
    #[command(name = "ghost-rss")]
    GhostRss {
        #[arg(long, default_value_t = 100_000)]
        commands: u64,
        /// Seconds connected and idle before the idle figure is read.
        #[arg(long, default_value_t = 5)]
        idle_secs: u64,
    },
    /// event → event.ack throughput: sessions send events pipelined, acks are counted.
    Events {
        #[arg(long, default_value_t = 1)]
        sessions: usize,
        /// Events per session.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Events in flight per session (1: each event waits for its ack, which measures
        /// one event's round trip: `ack_p50_us`).
        #[arg(long, default_value_t = 512)]
        window: usize,
    },
    /// N idle swarm Ghosts with heartbeats: Mirage RSS and CPU while holding them.
    Sessions {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// How long CPU is sampled once all are connected.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 5000)]
        heartbeat_ms: u64,
    },
    /// Restart Mirage under N swarm Ghosts; time until all are registered again.
    Storm {
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// Open-loop load for a while: RSS and p99 per interval (flat is the goal).
    Sustained {
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        #[arg(long, default_value_t = 60)]
        interval: u64,
        #[arg(long, default_value_t = 4)]
        ghosts: usize,
    },
    /// One intent whose step runs on every one of N swarm Ghosts: time to satisfied.
    Fanout {
        #[arg(long, default_value_t = 2000)]
        ghosts: usize,
        /// Intents, one after another.
        #[arg(long, default_value_t = 3)]
        rounds: u64,
    },
    /// Wire codec in-process: event frames decoded (frame + typed envelope) and encoded per s.
    Codec {
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Redraw the plot from a sweep's JSON line (e.g. copied from BENCHMARKS.md); no run.
    Plot {
        #[arg(long)]
        from: PathBuf,
        #[arg(long, default_value = "docs/bench/latency.svg")]
        out: PathBuf,
    },
    /// Latency against offered load: an open-loop run per rate, plotted as SVG.
    Sweep {
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "500,1000,2000,3000,4000,5000,6000,8000"
        )]
        rates: Vec<f64>,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        ghosts: usize,
        #[arg(long, default_value = "docs/bench/latency.svg")]
        plot: PathBuf,
    },
}

/// The `[store]` sections of `--etcd` runs (empty: SQLite).
static STORE_TOML: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn main() {
    let cli = Cli::parse();
    let _etcd = cli.etcd.then(|| {
        let c = e2e::etcd::EtcdCluster::start(3);
        let eps: Vec<String> = c.endpoints().iter().map(|e| format!("\"{e}\"")).collect();
        let _ = STORE_TOML.set(format!(
            "[store]\nbackend = \"etcd\"\n[store.etcd]\nendpoints = [{}]\nprefix = \"/bench-{}/\"\n",
            eps.join(", "),
            std::process::id()
        ));
        c
    });
    let name = match &cli.scenario {
        Scenario::Loop { .. } => "loop",
        Scenario::LoopReal { .. } => "loop-real",
        Scenario::GhostRss { .. } => "ghost-rss",
        Scenario::Events { .. } => "events",
        Scenario::Sessions { .. } => "sessions",
        Scenario::Storm { .. } => "storm",
        Scenario::Sustained { .. } => "sustained",
        Scenario::Codec { .. } => "codec",
        Scenario::Fanout { .. } => "fanout",
        Scenario::Sweep { .. } => "sweep",
        Scenario::Plot { .. } => "plot",
    };
    let mut out = match cli.scenario.clone() {
        Scenario::Loop {
            intents,
            concurrency,
            ghosts,
            rate,
            real,
            trace,
        } => loop_scenario(intents, concurrency, ghosts, rate, real, trace && real),
        Scenario::LoopReal {
            intents,
            concurrency,
            ghosts,
            rate,
            trace,
        } => loop_scenario(intents, concurrency, ghosts, rate, true, trace),
        Scenario::GhostRss {
            commands,
            idle_secs,
        } => ghost_rss_scenario(commands, idle_secs),
        Scenario::Events {
            sessions,
            events,
            window,
        } => events_scenario(sessions, events, window),
        Scenario::Sessions {
            count,
            seconds,
            heartbeat_ms,
        } => sessions_scenario(count, seconds, heartbeat_ms),
        Scenario::Storm { count } => storm_scenario(count),
        Scenario::Sustained {
            seconds,
            rate,
            interval,
            ghosts,
        } => sustained_scenario(seconds, rate, interval, ghosts),
        Scenario::Codec { seconds } => codec_scenario(seconds),
        Scenario::Plot { from, out } => {
            let text = std::fs::read_to_string(&from)
                .unwrap_or_else(|e| panic!("{}: {e}", from.display()));
            let v: Value = serde_json::from_str(text.trim())
                .unwrap_or_else(|e| panic!("{}: not a sweep's JSON line: {e}", from.display()));
            let points = v["points"].as_array().cloned().unwrap_or_default();
            let r = e2e::plot::latency_svg(&out, &points);
            println!(
                "{}",
                json!({"scenario": "plot", "points": points.len(), "plot": out.display().to_string(), "plot_error": r.err()})
            );
            return;
        }
        Scenario::Fanout { ghosts, rounds } => fanout_scenario(ghosts, rounds),
        Scenario::Sweep {
            rates,
            seconds,
            ghosts,
            plot,
        } => sweep_scenario(&rates, seconds, ghosts, &plot),
    };
    out["scenario"] = json!(name);
    out["store"] = json!(if cli.etcd {
        "etcd (3 members, loopback)"
    } else {
        "sqlite"
    });
    out["profile"] = json!(if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    });
    println!("{out}");
    if !cli.no_append {
        append(&cli.out, name, &out);
    }
}

fn loop_scenario(
    intents: u64,
    concurrency: usize,
    ghosts: usize,
    rate: Option<f64>,
    real: bool,
    trace: bool,
) -> Value {
    let log = trace.then_some(HOP_LOG);
    let bed = if real {
        Bed::start_real(ghosts, log)
    } else {
        Bed::start(ghosts, log)
    };
    let (m0, s0) = bed.cpu();
    let r = drive(&bed, intents, concurrency, rate, None);
    let (m1, s1) = bed.cpu();
    let mut v = r.json();
    v["ghosts"] = json!(ghosts);
    v["real_ghosts"] = json!(real);
    v["mirage_rss_kib"] = json!(bed.mirage.proc.rss_kib());
    // CPU per intent shows where a 2-core machine's time goes (clients take the rest).
    v["mirage_cpu_us_per_intent"] = json!(round((m1 - m0) * 1e6 / intents as f64, 1));
    v["swarm_cpu_us_per_intent"] = json!(round((s1 - s0) * 1e6 / intents as f64, 1));
    if trace {
        let mut logs = vec![bed.mirage.proc.log.clone()];
        logs.extend(bed.real.iter().map(|g| g.proc.log.clone()));
        v["hops"] = hop_breakdown(&logs);
        v["trace"] = json!(true);
    }
    v
}

/// The log filter of a traced run: warnings, and every `hop` event.
const HOP_LOG: &str = "warn,hop=debug";

/// Microseconds of the day from a log line's RFC 3339 timestamp (`...THH:MM:SS.ffffffZ`).
fn line_us(line: &str) -> Option<u64> {
    let t = line.split_whitespace().next()?;
    let time = t.split('T').nth(1)?.trim_end_matches('Z');
    let mut it = time.split(':');
    let (h, m, s) = (it.next()?, it.next()?, it.next()?);
    let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
    let frac_us: u64 = format!("{frac:0<6}")[..6].parse().ok()?;
    Some(
        (h.parse::<u64>().ok()? * 3600 + m.parse::<u64>().ok()? * 60 + secs.parse::<u64>().ok()?)
            * 1_000_000
            + frac_us,
    )
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=");
    let at = line.find(&key)? + key.len();
    let rest = &line[at..];
    let v = rest.split_whitespace().next()?;
    Some(v.trim_matches('"'))
}

/// Per intent, its hop events in time order (from Mirage's and the Ghosts' logs, one clock),
/// each hop named by its place (`plan.persisted#2`); then per consecutive pair the median
/// and p90 µs over all intents, in the order of the median time since `http.accept`.
fn hop_breakdown(logs: &[PathBuf]) -> Value {
    use std::collections::HashMap;
    let mut by_intent: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    let mut by_command: Vec<(String, u64, String)> = Vec::new();
    let mut cmd_intent: HashMap<String, String> = HashMap::new();
    for path in logs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains(" hop=")) {
            let (Some(t), Some(hop)) = (line_us(line), field(line, "hop")) else {
                continue;
            };
            if let Some(cid) = field(line, "command_id") {
                if let Some(iid) = field(line, "intent_id") {
                    cmd_intent.insert(cid.to_owned(), iid.to_owned());
                }
                by_command.push((cid.to_owned(), t, hop.to_owned()));
            } else if let Some(iid) = field(line, "intent_id") {
                by_intent
                    .entry(iid.to_owned())
                    .or_default()
                    .push((t, hop.to_owned()));
            }
        }
    }
    for (cid, t, hop) in by_command {
        if let Some(iid) = cmd_intent.get(&cid) {
            by_intent.entry(iid.clone()).or_default().push((t, hop));
        }
    }
    // pair -> (deltas, offsets of the pair's end from the start)
    let mut pairs: HashMap<String, (Vec<u64>, Vec<u64>)> = HashMap::new();
    let mut totals = Vec::new();
    let mut traced = 0u64;
    for (_, mut evs) in by_intent {
        evs.sort();
        let Some(first) = evs.first().filter(|e| e.1 == "http.accept").map(|e| e.0) else {
            continue;
        };
        if !evs.iter().any(|e| e.1 == "http.answer") {
            continue;
        }
        traced += 1;
        let mut seen: HashMap<String, usize> = HashMap::new();
        let named: Vec<(u64, String)> = evs
            .into_iter()
            .map(|(t, h)| {
                let n = seen.entry(h.clone()).or_default();
                *n += 1;
                (t, if *n > 1 { format!("{h}#{n}") } else { h })
            })
            .collect();
        for w in named.windows(2) {
            let e = pairs.entry(format!("{} → {}", w[0].1, w[1].1)).or_default();
            e.0.push(w[1].0.saturating_sub(w[0].0));
            e.1.push(w[1].0.saturating_sub(first));
        }
        if let Some(last) = named.last() {
            totals.push(last.0.saturating_sub(first));
        }
    }
    let med = |v: &mut Vec<u64>, q: f64| -> u64 {
        v.sort_unstable();
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let mut rows: Vec<(u64, Value)> = pairs
        .into_iter()
        .filter(|(_, (d, _))| d.len() as u64 * 10 >= traced)
        .map(|(k, (mut d, mut at))| {
            let n = d.len();
            let at50 = med(&mut at, 0.5);
            (
                at50,
                json!({"hop": k, "intents": n, "p50_us": med(&mut d, 0.5), "p90_us": med(&mut d, 0.9), "at_p50_us": at50}),
            )
        })
        .collect();
    rows.sort_by_key(|r| r.0);
    json!({
        "intents_traced": traced,
        "accept_to_answer_p50_us": med(&mut totals, 0.5),
        "accept_to_answer_p90_us": med(&mut totals, 0.9),
        "hops": rows.into_iter().map(|r| r.1).collect::<Vec<_>>(),
    })
}

/// Idle RSS of a real `ghost serve` connected to a Mirage, then ten samples while
/// `commands` one-step intents go through it.
fn ghost_rss_scenario(commands: u64, idle_secs: u64) -> Value {
    let bed = Bed::start_real(1, None);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let g = &bed.real[0];
    let idle = proc_mem(g.proc.child.id());
    let mut samples = Vec::new();
    let step = (commands / 10).max(1);
    let mut done = 0;
    let t0 = Instant::now();
    while done < commands {
        let n = step.min(commands - done);
        let r = drive(&bed, n, 16, None, None);
        done += n;
        let mut s = proc_mem(g.proc.child.id());
        s["commands"] = json!(done);
        s["failed"] = json!(r.failed);
        samples.push(s);
    }
    let last = samples.last().cloned().unwrap_or(Value::Null);
    json!({
        "commands": commands,
        "seconds": round(t0.elapsed().as_secs_f64(), 1),
        "idle": idle,
        "after": last,
        "samples": samples,
    })
}

/// VmRSS, RssAnon, AnonHugePages and threads of a process, in KiB.
fn proc_mem(pid: u32) -> Value {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let status = read("status");
    let rollup = read("smaps_rollup");
    let get = |text: &str, key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    json!({
        "rss_kib": get(&status, "VmRSS:"),
        "anon_kib": get(&status, "RssAnon:"),
        "file_kib": get(&status, "RssFile:"),
        "anon_huge_kib": get(&rollup, "AnonHugePages:"),
        "threads": get(&status, "Threads:"),
    })
}

// ------------------------------------------------------------------ test bed

/// A Mirage (release defaults except loopback ports and a temp data dir) and a swarm.
struct Bed {
    _dir: TempDir,
    mirage: Mirage,
    swarm: Option<std::process::Child>,
    /// `ghost serve` processes (`loop --real`), named like the swarm's Ghosts.
    real: Vec<Ghost>,
    prefix: String,
}

impl Bed {
    fn start(ghosts: usize, log: Option<&str>) -> Bed {
        let dir = TempDir::new("bench");
        let mirage = start_mirage(&dir, 0, log);
        let mut bed = Bed {
            _dir: dir,
            mirage,
            swarm: None,
            real: Vec::new(),
            prefix: "g-".into(),
        };
        if ghosts > 0 {
            bed.swarm = Some(start_swarm(&bed.mirage, ghosts, "g-", 5000));
        }
        bed
    }

    /// Mirage and `ghosts` real `ghost serve` processes (the harness's Ghost config).
    fn start_real(ghosts: usize, log: Option<&str>) -> Bed {
        let mut bed = Bed::start(0, log);
        if let Some(l) = log {
            // Read by the harness when it starts a Ghost; nothing else runs yet.
            std::env::set_var("E2E_GHOST_LOG", l);
        }
        for i in 0..ghosts {
            let g = Ghost::start(&bed._dir.0, &format!("g-{i}"), &bed.mirage.session, "");
            bed.real.push(g);
        }
        wait_connected(&bed.mirage, ghosts, Duration::from_secs(60));
        bed
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(c) = &mut self.swarm {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Mirage with production timeouts (the test harness uses short ones) and `warn` logs.
fn start_mirage(dir: &TempDir, port: u16, log: Option<&str>) -> Mirage {
    let cfg = dir.path("mirage.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nlocal_ghost = \"\"\n[api]\nlisten = \"127.0.0.1:0\"\n{}",
            dir.path("mirage").display(),
            STORE_TOML.get().map_or("", String::as_str)
        ),
    )
    .unwrap();
    let proc = Proc::spawn_env(
        &bin("mirage"),
        &["serve", "--config", cfg.to_str().unwrap()],
        dir.path("mirage.log"),
        &[(
            "RUST_LOG",
            &log.map(str::to_owned)
                .or_else(|| std::env::var("BENCH_LOG").ok())
                .unwrap_or_else(|| "warn".into()),
        )],
    );
    let session = proc.field("session");
    let api = proc.field("api");
    let m = Mirage { proc, session, api };
    if STORE_TOML.get().is_some() {
        // On etcd it orchestrates once it leads.
        wait_until("mirage leads", Duration::from_secs(30), || {
            m.get("/v1/overview").1["role"] == "leader"
        });
    }
    m
}

fn start_swarm(m: &Mirage, n: usize, prefix: &str, heartbeat_ms: u64) -> std::process::Child {
    let hb = heartbeat_ms.to_string();
    let (child, _rx) = swarm(
        &m.session,
        n,
        &["--id-prefix", prefix, "--heartbeat-ms", &hb],
    );
    wait_connected(m, n, Duration::from_secs(300));
    child
}

fn connected(m: &Mirage) -> u64 {
    let (_, o) = m.get("/v1/overview");
    o["ghosts_connected"].as_u64().unwrap_or(0)
}

fn wait_connected(m: &Mirage, n: usize, within: Duration) -> Duration {
    let t = Instant::now();
    while connected(m) < n as u64 {
        assert!(
            t.elapsed() < within,
            "only {} of {n} connected",
            connected(m)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

/// user+system CPU seconds of a process so far.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the state field.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

// ------------------------------------------------------------------ the loop

struct LoopResult {
    intents: u64,
    failed: u64,
    secs: f64,
    lat_us: Vec<u64>,
    concurrency: usize,
    rate: Option<f64>,
}

impl LoopResult {
    fn json(&self) -> Value {
        json!({
            "intents": self.intents,
            "failed": self.failed,
            "concurrency": self.concurrency,
            "offered_per_s": self.rate,
            "seconds": round(self.secs, 2),
            "intents_per_s": round(self.intents as f64 / self.secs, 0),
            "p50_ms": pct_ms(&self.lat_us, 0.50),
            "p99_ms": pct_ms(&self.lat_us, 0.99),
            "max_ms": pct_ms(&self.lat_us, 1.0),
        })
    }
}

fn round(x: f64, d: i32) -> f64 {
    let p = 10f64.powi(d);
    (x * p).round() / p
}

/// `lat` must be sorted.
fn pct_ms(lat: &[u64], q: f64) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    let i = ((lat.len() as f64 * q) as usize).min(lat.len() - 1);
    round(lat[i] as f64 / 1000.0, 3)
}

static RUN: AtomicU64 = AtomicU64::new(0);

/// Submits `total` one-step intents with `?wait=`, each to one swarm Ghost. With a rate,
/// client k sends its n-th intent at t0 + (n·C + k)/rate and latency counts from then, so a
/// stalled server is not hidden by clients that stopped sending (coordinated omission).
/// `progress` gets every latency as it is measured (sustained runs sample it).
fn drive(
    bed: &Bed,
    total: u64,
    concurrency: usize,
    rate: Option<f64>,
    progress: Option<&Mutex<Vec<u64>>>,
) -> LoopResult {
    let ghosts = bed.swarm_count();
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let next = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let lat = Mutex::new(Vec::with_capacity(total as usize));
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for k in 0..concurrency {
            let (next, failed, lat, api) = (&next, &failed, &lat, bed.mirage.api.clone());
            let prefix = bed.prefix.clone();
            s.spawn(move || {
                let mut c = KeepAlive::connect(&api);
                let mut mine = Vec::new();
                let mut n = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let start = match rate {
                        Some(r) => {
                            let at = t0
                                + Duration::from_secs_f64(
                                    (n as f64 * concurrency as f64 + k as f64) / r,
                                );
                            n += 1;
                            if let Some(d) = at.checked_duration_since(Instant::now()) {
                                std::thread::sleep(d);
                            }
                            at
                        }
                        None => Instant::now(),
                    };
                    let body = format!(
                        "intent_id=\"b{run}-{i}\"\nactor=\"bench\"\ntarget_scope=\"ghost:{prefix}{}\"\nobjective=\"bench\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"k{}\",value=\"{i}\"}}\n",
                        i % ghosts.max(1) as u64,
                        i % 1000
                    );
                    let (st, b) = c.request("POST", "/v1/intents?wait=60", &body);
                    let us = start.elapsed().as_micros() as u64;
                    if (st != 201 || !b.contains("\"status\":\"satisfied\""))
                        && failed.fetch_add(1, Ordering::Relaxed) < 3
                    {
                        eprintln!("bench: intent b{run}-{i}: {st} {b}");
                    }
                    mine.push(us);
                    if let Some(p) = progress {
                        p.lock().unwrap().push(us);
                    }
                }
                lat.lock().unwrap().extend(mine);
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let mut lat_us = lat.into_inner().unwrap();
    lat_us.sort_unstable();
    LoopResult {
        intents: total,
        failed: failed.into_inner(),
        secs,
        lat_us,
        concurrency,
        rate,
    }
}

impl Bed {
    /// CPU seconds used so far by Mirage and by the swarm.
    fn cpu(&self) -> (f64, f64) {
        (
            cpu_secs(self.mirage.proc.child.id()),
            self.swarm.as_ref().map(|c| cpu_secs(c.id())).unwrap_or(0.0)
                + self
                    .real
                    .iter()
                    .map(|g| cpu_secs(g.proc.child.id()))
                    .sum::<f64>(),
        )
    }

    fn swarm_count(&self) -> usize {
        let (_, v) = self.mirage.get("/v1/overview");
        v["ghosts_connected"].as_u64().unwrap_or(1) as usize
    }
}

// ------------------------------------------------------------------ events

fn events_scenario(sessions: usize, events: u64, window: usize) -> Value {
    let bed = Bed::start(0, None);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = bed.mirage.session.clone();
    let mirage_pid = bed.mirage.proc.child.id();
    let (acked, secs, mut lat_ns, cpu) = rt.block_on(async move {
        let mut conns = Vec::new();
        for s in 0..sessions {
            conns.push(e2e::blaster::Blaster::connect(&addr, &format!("ev-{s}")).await);
        }
        // Mirage's CPU during the blast only, not its start-up and the registrations.
        let cpu0 = cpu_secs(mirage_pid);
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for c in conns {
            tasks.push(tokio::spawn(c.blast_timed(events, window)));
        }
        let (mut acked, mut lat) = (0, Vec::new());
        for t in tasks {
            let b = t.await.unwrap();
            acked += b.acked;
            lat.extend(b.lat_ns);
        }
        let secs = t0.elapsed().as_secs_f64();
        (acked, secs, lat, cpu_secs(mirage_pid) - cpu0)
    });
    lat_ns.sort_unstable();
    // Write → ack per event; with a window of 1 this is the round trip of one event.
    let pct_us = |q: f64| round(pct_ms(&lat_ns, q), 1);
    json!({
        "sessions": sessions,
        "events": events * sessions as u64,
        "acked": acked,
        "window": window,
        "seconds": round(secs, 2),
        "acks_per_s": round(acked as f64 / secs, 0),
        "ack_p50_us": pct_us(0.50),
        "ack_p99_us": pct_us(0.99),
        "mirage_cpu_pct_of_one_core": round(cpu * 100.0 / secs, 1),
        "mirage_cpu_s": round(cpu_secs(mirage_pid), 2),
        "mirage_rss_kib": bed.mirage.proc.rss_kib(),
    })
}

// ------------------------------------------------------------------ sessions, storm

fn sessions_scenario(count: usize, seconds: u64, heartbeat_ms: u64) -> Value {
    let dir = TempDir::new("bench-sessions");
    let m = start_mirage(&dir, 0, None);
    let rss_empty = m.proc.rss_kib();
    let t = Instant::now();
    let mut sw = start_swarm(&m, count, "s-", heartbeat_ms);
    let connect_s = t.elapsed().as_secs_f64();
    // Let registration work settle before sampling the steady state.
    std::thread::sleep(Duration::from_secs(3));
    let pid = m.proc.child.id();
    let (c0, t0) = (cpu_secs(pid), Instant::now());
    let mut rss_max = 0;
    while t0.elapsed() < Duration::from_secs(seconds) {
        rss_max = rss_max.max(m.proc.rss_kib());
        std::thread::sleep(Duration::from_millis(500));
    }
    let cpu_pct = (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let still = connected(&m);
    let _ = sw.kill();
    let _ = sw.wait();
    json!({
        "ghosts": count,
        "connected_at_end": still,
        "heartbeat_ms": heartbeat_ms,
        "connect_all_s": round(connect_s, 2),
        "sampled_s": seconds,
        "mirage_rss_empty_kib": rss_empty,
        "mirage_rss_kib": rss_max,
        "kib_per_session": round((rss_max.saturating_sub(rss_empty)) as f64 / count as f64, 1),
        "mirage_cpu_pct_of_one_core": round(cpu_pct, 1),
    })
}

fn storm_scenario(count: usize) -> Value {
    let dir = TempDir::new("bench-storm");
    let mut m = start_mirage(&dir, 0, None);
    let port: u16 = m.session.rsplit(':').next().unwrap().parse().unwrap();
    let mut sw = start_swarm(&m, count, "st-", 5000);
    let rss = m.proc.rss_kib();
    m.proc.sigterm();
    let t = Instant::now();
    let m2 = start_mirage(&dir, port, None);
    let ready = t.elapsed();
    let all = wait_connected(&m2, count, Duration::from_secs(300));
    let total = t.elapsed();
    let _ = sw.kill();
    let _ = sw.wait();
    json!({
        "ghosts": count,
        "mirage_rss_before_kib": rss,
        "mirage_ready_s": round(ready.as_secs_f64(), 2),
        "all_registered_after_ready_s": round(all.as_secs_f64(), 2),
        "all_registered_after_restart_s": round(total.as_secs_f64(), 2),
        "mirage_rss_after_kib": m2.proc.rss_kib(),
    })
}

// ------------------------------------------------------------------ sustained, sweep

fn sustained_scenario(seconds: u64, rate: f64, interval: u64, ghosts: usize) -> Value {
    let bed = Bed::start(ghosts, None);
    let total = (rate * seconds as f64) as u64;
    let samples = Mutex::new(Vec::<u64>::new());
    let series = Mutex::new(Vec::<Value>::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    let pid = bed.mirage.proc.child.id();
    let result = std::thread::scope(|s| {
        let (samples, series, done, bed) = (&samples, &series, &done, &bed);
        s.spawn(move || {
            let t0 = Instant::now();
            let mut k = 1u64;
            while !done.load(Ordering::Relaxed) {
                let due = t0 + Duration::from_secs(interval * k);
                while Instant::now() < due && !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let mut lat = std::mem::take(&mut *samples.lock().unwrap());
                lat.sort_unstable();
                let rss = bed.mirage.proc.rss_kib();
                let p = json!({"t_s": round(t0.elapsed().as_secs_f64(), 0), "rss_kib": rss,
                    "intents": lat.len(), "p50_ms": pct_ms(&lat, 0.5), "p99_ms": pct_ms(&lat, 0.99)});
                eprintln!("bench: {p}");
                series.lock().unwrap().push(p);
                k += 1;
            }
        });
        let concurrency = ((rate / 250.0).ceil() as usize).clamp(8, 128);
        let r = drive(bed, total, concurrency, Some(rate), Some(samples));
        done.store(true, Ordering::Relaxed);
        r
    });
    let series = series.into_inner().unwrap();
    let rss_at = |i: usize| {
        series
            .get(i)
            .and_then(|p| p["rss_kib"].as_u64())
            .unwrap_or(0)
    };
    let first = rss_at(0);
    let last = series
        .iter()
        .rev()
        .find(|p| p["intents"].as_u64().unwrap_or(0) > 0)
        .and_then(|p| p["rss_kib"].as_u64())
        .unwrap_or(0);
    let mut v = result.json();
    v["interval_s"] = json!(interval);
    v["series"] = json!(series);
    v["rss_first_interval_kib"] = json!(first);
    v["rss_last_interval_kib"] = json!(last);
    v["rss_growth_pct"] = json!(if first > 0 {
        round((last as f64 / first as f64 - 1.0) * 100.0, 1)
    } else {
        0.0
    });
    v["mirage_cpu_s"] = json!(round(cpu_secs(pid), 1));
    v
}

fn sweep_scenario(rates: &[f64], seconds: u64, ghosts: usize, plot: &std::path::Path) -> Value {
    let bed = Bed::start(ghosts, None);
    let mut points = Vec::new();
    for &r in rates {
        let total = (r * seconds as f64) as u64;
        let concurrency = ((r / 250.0).ceil() as usize).clamp(8, 128);
        let res = drive(&bed, total, concurrency, Some(r), None);
        let v = res.json();
        eprintln!("bench: rate {r}: {v}");
        points.push(v);
    }
    if let Some(parent) = plot.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let plotted = e2e::plot::latency_svg(plot, &points);
    json!({"ghosts": ghosts, "seconds_per_rate": seconds, "points": points,
        "plot": plot.display().to_string(), "plot_error": plotted.err()})
}

fn fanout_scenario(ghosts: usize, rounds: u64) -> Value {
    let bed = Bed::start(ghosts, None);
    let mut took = Vec::new();
    for r in 0..rounds {
        let body = format!(
            "intent_id=\"fan{r}\"\nactor=\"bench\"\ntarget_scope=\"ghost:g-*\"\nobjective=\"bench\"\n[[step]]\nseed=\"seed.kv\"\noperation=\"put\"\nargs={{key=\"k\",value=\"{r}\"}}\ntimeout=\"300s\"\n"
        );
        let t = Instant::now();
        let (st, v) = http(&bed.mirage.api, "POST", "/v1/intents?wait=300", Some(&body));
        assert!(st == 201 && v["status"] == "satisfied", "{st} {v}");
        took.push(round(t.elapsed().as_secs_f64(), 3));
    }
    json!({"ghosts": ghosts, "rounds": rounds, "seconds_each": took,
        "mirage_rss_kib": bed.mirage.proc.rss_kib()})
}

// ------------------------------------------------------------------ codec

fn codec_scenario(seconds: f64) -> Value {
    use shared::envelope::{Envelope, Event, Outcome};
    use shared::wire::{decode_one, Limits};
    let mut e = Event::new(
        "evt.cmd.intent-1.0.ghost-17.0",
        "cmd.intent-1.0.ghost-17.0",
        "intent-1",
        "ghost-17",
        "seed.kv",
        Outcome::Success,
    );
    e.timestamp_ms = Some(1_700_000_000_000);
    e.stdout = Some(b"ok\n".to_vec().into());
    let frame = Envelope::Event(e).to_frame(7).unwrap();
    let bytes = frame.to_bytes().unwrap();
    let limits = Limits::default();
    let budget = Duration::from_secs_f64(seconds);
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < budget {
        for _ in 0..1000 {
            let f = decode_one(&bytes, &limits).unwrap();
            let env = Envelope::from_frame(&f).unwrap();
            std::hint::black_box(env);
        }
        n += 1000;
    }
    let decode = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut m = 0u64;
    let env = Envelope::from_frame(&frame).unwrap();
    while t.elapsed() < budget {
        for _ in 0..1000 {
            let _ = std::hint::black_box(env.to_frame(7).unwrap().to_bytes());
        }
        m += 1000;
    }
    let encode = m as f64 / t.elapsed().as_secs_f64();
    json!({"frame_bytes": bytes.len(), "decode_per_s": round(decode, 0),
        "encode_per_s": round(encode, 0),
        "decode_mib_per_s": round(decode * bytes.len() as f64 / 1048576.0, 1)})
}

// ------------------------------------------------------------------ output

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    json!({"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": model, "mem_gib": mem_kib / 1048576})
}

/// UTC date and time, from the system clock (no calendar crate for one line).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn append(path: &std::path::Path, name: &str, v: &Value) {
    let cmd: Vec<String> = std::env::args().skip(1).collect();
    let mut v = v.clone();
    v["machine"] = machine();
    // Which code the figures belong to ("-dirty": uncommitted changes besides the results).
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    v["commit"] = match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            let dirty = git(&[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)BENCHMARKS.md",
                ":(exclude)docs/bench",
            ])
            .is_some_and(|o| !o.is_empty());
            json!(if dirty { format!("{c}-dirty") } else { c })
        }
        _ => Value::Null,
    };
    let text = format!(
        "\n### {name} — {}\n\n`cargo run --release -p e2e --bin bench -- {}`\n\n```json\n{}\n```\n",
        utc_now(),
        cmd.join(" "),
        v
    );
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap();
    eprintln!("bench: appended to {}", path.display());
}
